// qllm serve's server object, shared by its translation units: setup, routing and the plain
// endpoints (server.cpp), and the completion endpoints with their streams (completion.cpp).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <httplib.h>

#include "qllm/engine.hpp"
#include "qllm/model.hpp"
#include "qllm/tokenizer.hpp"
#include "serve/connection.hpp"
#include "serve/http_util.hpp"
#include "serve/request.hpp"
#include "serve/server.hpp"

namespace qllm::serve::detail {

using clock = std::chrono::steady_clock;

// What the engine's thread hands the HTTP thread of one request.
struct channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> pieces;  // streamed text not yet written
  bool done = false;
  engine_result result;
  clock::time_point last_token;
  bool any_token = false;
  bool abandoned = false;  // a stream whose client left: the result, when it comes, is counted as 499
  bool accounted = false;  // the request's tokens and status are in the metrics (exactly once)
};

// Counts a request as in flight from its start until its response is written (streams: until
// httplib releases the content provider).
struct in_flight_guard {
  std::atomic<int64_t>& n;
  explicit in_flight_guard(std::atomic<int64_t>& c) : n(c) { ++n; }
  ~in_flight_guard() { --n; }
  in_flight_guard(const in_flight_guard&) = delete;
  in_flight_guard& operator=(const in_flight_guard&) = delete;
};

struct completion_call;

class server {
 public:
  explicit server(const options& o) : o_(o) {}
  int run();

 private:
  void route();
  bool authorized(const httplib::Request& req) const;
  // /v1/completions and /v1/chat/completions (completion.cpp)
  void completion(const std::string& req_body, httplib::Response& res, bool chat);
  std::vector<int32_t> chat_prompt(const json& body, gen_settings& g);
  std::vector<int32_t> text_prompt(const json& body, gen_settings& g);
  void reply_whole(const std::shared_ptr<completion_call>& call, httplib::Response& res);
  void reply_stream(const std::shared_ptr<completion_call>& call, std::shared_ptr<in_flight_guard> flight,
                    httplib::Response& res);
  // a completion's tokens and times in the metrics; abandoned: also counted as a 499
  void finished(const engine_result& r, clock::time_point t_start);
  void abandoned(const engine_result& r, clock::time_point t_start);
  void embeddings(const std::string& req_body, httplib::Response& res);
  void answer(httplib::Response& res, int status, const json& body);
  void fail(httplib::Response& res, const http_error& e);
  std::string metrics_text();

  options o_;
  std::shared_ptr<const model> model_;
  const tokenizer* tok_ = nullptr;
  std::unique_ptr<engine> engine_;
  std::unique_ptr<context> embed_ctx_;
  std::mutex embed_mu_;
  std::string key_;
  std::string name_;
  guarded_server http_{o_.max_body};
  metrics met_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> prompt_tokens_{0}, generated_tokens_{0};
  std::atomic<int64_t> in_flight_{0};
  std::time_t started_ = std::time(nullptr);
};

}  // namespace qllm::serve::detail
