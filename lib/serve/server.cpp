// qllm serve: HTTP (cpp-httplib) and JSON (nlohmann) over qllm::engine.
//
// Each HTTP request runs on one of httplib's pool threads. A completion is submitted to the
// engine, whose thread pushes the generated text into the request's channel; the HTTP thread
// waits on that channel (non-streamed) or writes it out as server-sent events (streamed), and
// cancels the engine request when the client goes away or the request's time is up.
#include "serve/server.hpp"

#include "serve/connection.hpp"
#include "serve/http_util.hpp"
#include "serve/request.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <ctime>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "qllm/engine.hpp"
#include "qllm/error.hpp"
#include "qllm/model.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"
#include "qllm/version.hpp"

namespace qllm::serve {

using json = nlohmann::json;
using clock = std::chrono::steady_clock;

namespace {

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

class server {
 public:
  explicit server(const options& o) : o_(o) {}
  int run();

 private:
  void route();
  bool authorized(const httplib::Request& req) const;
  void completion(const std::string& req_body, httplib::Response& res, bool chat);
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

void server::answer(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
  met_.count(status);
}

// /health and /metrics: not counted in qllm_requests_total (load balancers and scrapers poll them)
void answer_uncounted(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void server::fail(httplib::Response& res, const http_error& e) {
  if (e.status == 429 || e.status == 503) res.set_header("Retry-After", "1");
  answer(res, e.status, error_body(e));
}

// Constant-time comparison of the presented bearer token with the key: the time depends on the
// key's length only.
bool server::authorized(const httplib::Request& req) const {
  if (key_.empty()) return true;
  const std::string h = req.get_header_value("Authorization");
  const std::string prefix = "bearer ";  // the scheme is case-insensitive (RFC 7235)
  if (h.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(h[i])) != prefix[i]) return false;
  const std::string_view given(h.data() + prefix.size(), h.size() - prefix.size());
  unsigned diff = given.size() == key_.size() ? 0u : 1u;
  for (std::size_t i = 0; i < key_.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= unsigned(g ^ static_cast<unsigned char>(key_[i]));
  }
  return diff == 0;
}

void server::completion(const std::string& req_body, httplib::Response& res, bool chat) {
  const auto t_start = clock::now();
  auto flight = std::make_shared<in_flight_guard>(in_flight_);
  if (draining_) throw http_error{503, "the server is shutting down", "server_error", "shutting_down", ""};
  json body = json::parse(req_body, nullptr, false);
  if (body.is_discarded()) bad_request("the body is not valid JSON");
  if (!body.is_object()) bad_request("the body must be a JSON object");
  gen_settings g;
  std::vector<int32_t> prompt;
  if (chat) {
    check_fields(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                        "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty", "penalty_last_n", "seed",
                        "stop", "logit_bias", "n", "stream", "context_policy", "n_keep", "speculation", "draft_tokens"});
    parse_common(body, *model_, g, -1, o_.draft_tokens);
    auto it = body.find("messages");
    if (it == body.end() || !it->is_array() || it->empty())
      bad_request("'messages' must be a non-empty array", "messages");
    std::vector<chat_message> dialog;
    for (const auto& msg : *it) {
      if (!msg.is_object()) bad_request("each message must be an object with 'role' and 'content'", "messages");
      const auto role = msg.find("role");
      const auto content = msg.find("content");
      if (role == msg.end() || !role->is_string()) bad_request("a message has no 'role' string", "messages");
      if (content == msg.end()) bad_request("a message has no 'content'", "messages");
      std::string text;
      if (content->is_string()) {
        text = content->get<std::string>();
      } else if (content->is_array()) {  // content parts: text only
        for (const auto& part : *content) {
          if (!part.is_object() || !part.contains("type") || !part["type"].is_string() || part["type"] != "text" ||
              !part.contains("text") || !part["text"].is_string())
            bad_request("only text content parts are supported", "messages");
          text += part["text"].get<std::string>();
        }
      } else {
        bad_request("'content' must be a string", "messages");
      }
      dialog.push_back({role->get<std::string>(), std::move(text)});
    }
    if (!dialog.empty() && dialog.front().role == "system") g.req.n_keep = std::max<int64_t>(g.req.n_keep, 1);
    try {
      prompt = chat_tokens(*tok_, dialog);
      if (!dialog.empty() && dialog.front().role == "system" && !body.contains("n_keep"))
        g.req.n_keep = chat_system_tokens(*tok_, dialog.front().content);
    } catch (const error& e) {
      bad_request(e.what(), "messages");
    }
  } else {
    check_fields(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                        "frequency_penalty", "repeat_penalty", "penalty_last_n", "seed", "stop", "logit_bias", "n",
                        "stream", "context_policy", "n_keep", "speculation", "draft_tokens"});
    parse_common(body, *model_, g, 16, o_.draft_tokens);
    auto it = body.find("prompt");
    if (it == body.end()) bad_request("'prompt' is required", "prompt");
    std::string text;
    if (it->is_string()) {
      text = it->get<std::string>();
    } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
      text = (*it)[0].get<std::string>();
    } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
      for (const auto& x : *it) {  // token ids
        if (!x.is_number_integer()) bad_request("'prompt' token arrays must hold integers only", "prompt");
        const int64_t id = x.get<int64_t>();
        if (id < 0 || id >= model_->config().n_vocab)
          bad_request("'prompt' token " + std::to_string(id) + " is outside the vocabulary", "prompt");
        prompt.push_back(int32_t(id));
      }
    } else {
      bad_request("'prompt' must be a string (or an array of one string, or of token ids)", "prompt");
    }
    if (prompt.empty()) {
      try {
        prompt = tok_->encode(text, tok_->add_bos());
      } catch (const error& e) {
        bad_request(e.what(), "prompt");
      }
    }
  }
  if (auto it = body.find("model"); it != body.end() && !it->is_null() && !it->is_string())
    bad_request("'model' must be a string", "model");
  // an operator's limit (--max-prompt-tokens); the window itself is the engine's fit, whose
  // message is qllm run's
  const int64_t limit = o_.max_prompt_tokens;
  if (limit > 0 && int64_t(prompt.size()) > limit)
    throw http_error{400,
                     "the prompt has " + std::to_string(prompt.size()) + " tokens, " +
                         std::to_string(int64_t(prompt.size()) - limit) + " too many for this server's limit of " +
                         std::to_string(limit),
                     "invalid_request_error", "context_length_exceeded", chat ? "messages" : "prompt"};
  if (g.req.gen.max_tokens >= engine_->n_ctx())
    bad_request("'max_tokens' " + std::to_string(g.req.gen.max_tokens) + " leaves no room for a prompt in the window of " +
                    std::to_string(engine_->n_ctx()) + " tokens",
                "max_tokens");

  const int sock = current_conn() ? current_conn()->socket() : -1;
  auto ch = std::make_shared<channel>();
  const bool strip_space = chat;  // the answer's first piece carries the template's space
  auto first_piece = std::make_shared<bool>(true);
  metrics* met = &met_;
  g.req.on_token = [ch, strip_space, first_piece, met](std::string_view text, int32_t tok) {
    const auto now = clock::now();
    std::string piece(text);
    if (strip_space && *first_piece && !piece.empty()) {
      if (piece[0] == ' ') piece.erase(0, 1);
      *first_piece = false;
    }
    std::lock_guard<std::mutex> lk(ch->mu);
    if (tok >= 0) {
      if (ch->any_token) met->itl.observe(std::chrono::duration<double>(now - ch->last_token).count());
      ch->any_token = true;
      ch->last_token = now;
    }
    if (!piece.empty()) ch->pieces.push_back(std::move(piece));
    ch->cv.notify_all();
    return true;
  };
  auto on_finished = [this, t_start](const engine_result& r) {
    prompt_tokens_ += uint64_t(std::max<int64_t>(0, r.gen.timings.n_prompt));
    generated_tokens_ += uint64_t(r.gen.tokens.size());
    if (r.first_token_seconds > 0) met_.ttft.observe(r.first_token_seconds);
    met_.duration.observe(std::chrono::duration<double>(clock::now() - t_start).count());
  };
  // a stream whose client left before its end: its tokens count, and it counts as 499
  auto on_abandoned = [this, on_finished](const engine_result& r) {
    on_finished(r);
    met_.count(499);
  };
  g.req.on_done = [ch, on_abandoned](const engine_result& r) {
    bool account = false;
    {
      std::lock_guard<std::mutex> lk(ch->mu);
      ch->result = r;
      ch->done = true;
      account = ch->abandoned && !ch->accounted;
      if (account) ch->accounted = true;
      ch->cv.notify_all();
    }
    if (account) on_abandoned(r);
  };
  const context_policy policy = g.req.policy;
  const int64_t n_prompt_given = int64_t(prompt.size());
  g.req.prompt = std::move(prompt);
  engine::submitted sub;
  try {
    sub = engine_->submit(std::move(g.req));
  } catch (const error& e) {
    switch (e.code()) {
      case errc::context_overflow:
        throw http_error{400, e.what(), "invalid_request_error", "context_length_exceeded", chat ? "messages" : "prompt"};
      case errc::busy:
        if (draining_) throw http_error{503, e.what(), "server_error", "shutting_down", ""};
        throw http_error{429, std::string(e.what()) + "; retry later", "rate_limit_error", "overloaded", ""};
      case errc::invalid_argument:
      case errc::unsupported: bad_request(e.what());
      default: throw;
    }
  }
  const int64_t n_prompt = n_prompt_given - sub.fit.n_dropped;
  const uint64_t id = sub.id;
  const std::string rid = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  const std::time_t created = std::time(nullptr);
  const json qllm_ext = fit_report(sub.fit, policy);
  const auto deadline = t_start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o_.request_timeout));
  engine* eng = engine_.get();
  const bool speculating = g.req.gen.draft_tokens > 0;
  auto usage = [n_prompt, speculating](const engine_result& r) {
    const int64_t c = int64_t(r.gen.tokens.size());
    json u{{"prompt_tokens", n_prompt}, {"completion_tokens", c}, {"total_tokens", n_prompt + c}};
    if (speculating)  // OpenAI's fields for predicted tokens: the drafts kept and rejected
      u["completion_tokens_details"] = {{"accepted_prediction_tokens", r.gen.spec.accepted},
                                        {"rejected_prediction_tokens", r.gen.spec.drafted - r.gen.spec.accepted}};
    return u;
  };

  if (!g.stream) {
    engine_result r;
    bool timed_out = false, gone = false;
    {
      std::unique_lock<std::mutex> lk(ch->mu);
      while (!ch->done) {
        ch->cv.wait_for(lk, std::chrono::milliseconds(100));
        if (ch->done) break;
        if (!gone && !timed_out) {
          lk.unlock();
          if (client_gone(sock)) gone = true;
          else if (clock::now() > deadline) timed_out = true;
          if (gone || timed_out) eng->cancel(id);
          lk.lock();
        }
      }
      r = ch->result;
    }
    on_finished(r);
    if (gone) {
      met_.count(499);  // the client closed the connection; nothing reaches it
      res.status = 499;
      res.set_content("{}", "application/json");
      return;
    }
    if (timed_out) throw http_error{504, "the request took longer than the server's limit", "server_error", "timeout", ""};
    if (!r.error.empty()) throw http_error{500, r.error, "server_error", "", ""};
    if (r.gen.finish == finish_reason::cancelled)  // only a shutdown cancels what the caller did not
      throw http_error{503, "the server is shutting down; the request was stopped", "server_error", "shutting_down", ""};
    std::string text = r.gen.text;
    if (chat && !text.empty() && text[0] == ' ') text.erase(0, 1);
    json choice = {{"index", 0}, {"finish_reason", finish_name(r.gen.finish)}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      choice["text"] = text;
      choice["logprobs"] = nullptr;
    }
    answer(res, 200,
           json{{"id", rid}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
                {"model", name_}, {"choices", json::array({choice})}, {"usage", usage(r)}, {"qllm", qllm_ext}});
    return;
  }

  // streamed: server-sent events, written by httplib's thread as the engine produces them; counted
  // when it ends (200, or 499 when the client leaves first)
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // nginx: pass events through at once
  const std::string object = chat ? "chat.completion.chunk" : "text_completion";
  const std::string name = name_;
  const bool include_usage = g.include_usage;
  auto state = std::make_shared<int>(0);  // 0: nothing sent, 1: role sent, 2: finished
  auto late = std::make_shared<bool>(false);  // past --timeout: cancelled, the stream to be ended
  auto chunk = [rid, object, created, name, chat](const std::string& text, const json& finish) {
    json choice = {{"index", 0}, {"finish_reason", finish}};
    if (chat)
      choice["delta"] = text.empty() && finish.is_null() ? json{{"role", "assistant"}, {"content", ""}}
                                                          : (finish.is_null() ? json{{"content", text}} : json::object());
    else {
      choice["text"] = text;
      choice["logprobs"] = nullptr;
    }
    return json{{"id", rid}, {"object", object}, {"created", created}, {"model", name}, {"choices", json::array({choice})}};
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, ch, state, late, chunk, deadline, eng, id, chat, qllm_ext, include_usage, usage, on_finished, sock](
          std::size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string ev = "data: " + dump(j) + "\n\n";
          return sink.write(ev.data(), ev.size());
        };
        if (*state == 0) {
          json first = chunk("", nullptr);
          first["qllm"] = qllm_ext;
          if (!chat) first["choices"][0]["text"] = "";
          *state = 1;
          if (!send(first)) {
            eng->cancel(id);
            return false;
          }
        }
        std::deque<std::string> pieces;
        bool done = false;
        engine_result r;
        {
          std::unique_lock<std::mutex> lk(ch->mu);
          if (ch->pieces.empty() && !ch->done) ch->cv.wait_for(lk, std::chrono::milliseconds(100));
          pieces.swap(ch->pieces);
          done = ch->done;
          if (done) r = ch->result;
        }
        for (const auto& p : pieces) {
          if (!send(chunk(p, nullptr))) {
            eng->cancel(id);
            return false;
          }
        }
        if (!done) {
          if (client_gone(sock)) {
            eng->cancel(id);
            return false;
          }
          if (!*late && clock::now() > deadline) {  // stop it, then end the stream properly
            *late = true;
            eng->cancel(id);
          }
          return true;
        }
        bool account;
        {
          std::lock_guard<std::mutex> lk(ch->mu);
          account = !ch->accounted;
          ch->accounted = true;
        }
        if (account) {
          on_finished(r);
          met_.count(200);
        }
        *state = 2;
        if (!r.error.empty() || r.gen.finish == finish_reason::cancelled) {
          const std::string msg = !r.error.empty() ? r.error
                                  : *late         ? "the request took longer than the server's limit"
                                                  : "the server is shutting down; the request was stopped";
          if (!send(json{{"error", {{"message", msg}, {"type", "server_error"}}}})) return false;
        } else {
          json last = chunk("", finish_name(r.gen.finish));
          if (chat) last["choices"][0]["delta"] = json::object();
          if (!send(last)) return false;
          if (include_usage) {  // as OpenAI: one last chunk with no choices, only when asked for
            json u = chunk("", nullptr);
            u["choices"] = json::array();
            u["usage"] = usage(r);
            if (!send(u)) return false;
          }
        }
        static const char kDone[] = "data: [DONE]\n\n";
        if (!sink.write(kDone, sizeof(kDone) - 1)) return false;
        sink.done();
        return true;
      },
      [ch, eng, id, flight, on_abandoned](bool success) {
        if (success) return;
        // the client went away before the end: what was generated is counted once the engine
        // hands back the result (now, if it already has)
        bool account = false;
        engine_result r;
        {
          std::lock_guard<std::mutex> lk(ch->mu);
          ch->abandoned = true;
          if (ch->done && !ch->accounted) {
            ch->accounted = account = true;
            r = ch->result;
          }
        }
        if (account) on_abandoned(r);
        eng->cancel(id);
      });
}

void server::embeddings(const std::string& req_body, httplib::Response& res) {
  in_flight_guard flight(in_flight_);
  if (draining_) throw http_error{503, "the server is shutting down", "server_error", "shutting_down", ""};
  json body = json::parse(req_body, nullptr, false);
  if (body.is_discarded()) bad_request("the body is not valid JSON");
  if (!body.is_object()) bad_request("the body must be a JSON object");
  check_fields(body, {"model", "input", "encoding_format", "dimensions"});
  const std::string fmt = get_string(body, "encoding_format", "float");
  if (fmt != "float" && fmt != "base64") bad_request("'encoding_format' must be \"float\" or \"base64\"", "encoding_format");
  if (body.contains("dimensions") && !body["dimensions"].is_null() &&
      get_int(body, "dimensions", 1, 1 << 30, 0) != model_->config().n_embd)
    bad_request("'dimensions' must be " + std::to_string(model_->config().n_embd) + " for this model", "dimensions");
  auto it = body.find("input");
  if (it == body.end()) bad_request("'input' is required", "input");
  std::vector<std::string> inputs;
  if (it->is_string()) {
    inputs.push_back(it->get<std::string>());
  } else if (it->is_array() && !it->empty() && it->size() <= 256) {
    for (const auto& x : *it) {
      if (!x.is_string()) bad_request("'input' must be a string or an array of strings", "input");
      inputs.push_back(x.get<std::string>());
    }
  } else {
    bad_request("'input' must be a string or an array of 1 to 256 strings", "input");
  }
  json data = json::array();
  int64_t total = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    std::vector<int32_t> toks;
    try {
      toks = tok_->encode(inputs[i], tok_->add_bos());
    } catch (const error& e) {
      bad_request(e.what(), "input");
    }
    if (int64_t(toks.size()) > embed_ctx_->n_ctx())
      throw http_error{400,
                       "input " + std::to_string(i) + " has " + std::to_string(toks.size()) + " tokens, " +
                           std::to_string(int64_t(toks.size()) - embed_ctx_->n_ctx()) + " too many for the window of " +
                           std::to_string(embed_ctx_->n_ctx()),
                       "invalid_request_error", "context_length_exceeded", "input"};
    total += int64_t(toks.size());
    if (total > embed_ctx_->n_ctx())
      throw http_error{400,
                       "the inputs have more than " + std::to_string(embed_ctx_->n_ctx()) +
                           " tokens in all (one window per request): send them in several requests",
                       "invalid_request_error", "context_length_exceeded", "input"};
    std::vector<float> e;
    {
      std::lock_guard<std::mutex> lk(embed_mu_);
      e = embed_ctx_->embed(toks);
    }
    json item = {{"object", "embedding"}, {"index", i}};
    if (fmt == "base64")
      item["embedding"] = base64_floats(e);
    else
      item["embedding"] = e;
    data.push_back(std::move(item));
  }
  prompt_tokens_ += uint64_t(total);
  answer(res, 200,
         json{{"object", "list"}, {"data", data}, {"model", name_},
              {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}});
}

std::string server::metrics_text() {
  std::ostringstream o;
  const auto st = engine_->get_stats();
  o << "# HELP qllm_requests_total HTTP requests to /v1 answered, by status code (499: the client left first).\n# TYPE qllm_requests_total counter\n";
  {
    std::lock_guard<std::mutex> lk(met_.mu);
    if (met_.by_status.empty()) o << "qllm_requests_total{status=\"200\"} 0\n";
    for (const auto& [status, n] : met_.by_status) o << "qllm_requests_total{status=\"" << status << "\"} " << n << '\n';
  }
  o << "# HELP qllm_prompt_tokens_total Prompt tokens evaluated (cached prefixes not counted).\n"
       "# TYPE qllm_prompt_tokens_total counter\nqllm_prompt_tokens_total "
    << prompt_tokens_.load() << '\n';
  o << "# HELP qllm_generated_tokens_total Tokens generated.\n# TYPE qllm_generated_tokens_total counter\n"
       "qllm_generated_tokens_total "
    << generated_tokens_.load() << '\n';
  o << "# HELP qllm_queue_depth Requests waiting for a slot.\n# TYPE qllm_queue_depth gauge\nqllm_queue_depth "
    << st.waiting << '\n';
  o << "# HELP qllm_active_slots Slots generating.\n# TYPE qllm_active_slots gauge\nqllm_active_slots " << st.active
    << '\n';
  o << "# HELP qllm_slots Slots (requests decoded together).\n# TYPE qllm_slots gauge\nqllm_slots "
    << engine_->n_slots() << '\n';
  o << "# HELP qllm_forward_passes_total Forward passes of the batch.\n# TYPE qllm_forward_passes_total counter\n"
       "qllm_forward_passes_total "
    << st.steps << '\n';
  met_.ttft.write(o, "qllm_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.");
  met_.itl.write(o, "qllm_inter_token_seconds", "Seconds between consecutive tokens of a request.");
  met_.duration.write(o, "qllm_request_seconds", "Seconds from a completion request's arrival to its end.");
  return o.str();
}

void server::route() {
  // fn(req, body, res); `reader` is null for requests without a body (GET)
  auto run_guarded = [this](auto& fn, const httplib::Request& req, httplib::Response& res,
                            const httplib::ContentReader* reader) {
      try {
        if (!authorized(req)) {
          // the body is not read: the connection cannot go on after the answer
          if (reader && current_conn()) current_conn()->close_after_response();
          throw http_error{401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error",
                           "invalid_api_key", ""};
        }
        std::string body;
        if (reader) {
          std::string msg;
          if (const int st = read_body(req, *reader, o_.max_body, body, msg); st != 0)
            throw http_error{st, msg, "invalid_request_error", "", ""};
        }
        fn(req, body, res);
      } catch (const http_error& e) {
        fail(res, e);
      } catch (const json::exception& e) {  // a field of the wrong type read by the JSON library
        fail(res, http_error{400, std::string("a field has the wrong type: ") + e.what(), "invalid_request_error", "",
                             ""});
      } catch (const error& e) {
        fail(res, http_error{e.code() == errc::invalid_argument ? 400 : 500, e.what(),
                             e.code() == errc::invalid_argument ? "invalid_request_error" : "server_error", "", ""});
      } catch (const std::bad_alloc&) {
        fail(res, http_error{500, "out of memory", "server_error", "", ""});
      } catch (const std::exception& e) {
        fail(res, http_error{500, e.what(), "server_error", "", ""});
      }
  };
  // POST endpoints read their bodies themselves (bounded by --max-body, chunked or not)
  auto post = [this, run_guarded](auto&& fn) {
    return [run_guarded, fn](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& rd) {
      run_guarded(fn, req, res, &rd);
    };
  };
  auto get = [run_guarded](auto&& fn) {
    return [run_guarded, fn](const httplib::Request& req, httplib::Response& res) { run_guarded(fn, req, res, nullptr); };
  };
  http_.Post("/v1/completions",
             post([this](const httplib::Request&, const std::string& b, httplib::Response& r) { completion(b, r, false); }));
  http_.Post("/v1/chat/completions",
             post([this](const httplib::Request&, const std::string& b, httplib::Response& r) { completion(b, r, true); }));
  http_.Post("/v1/embeddings",
             post([this](const httplib::Request&, const std::string& b, httplib::Response& r) { embeddings(b, r); }));
  http_.Get("/v1/models", get([this](const httplib::Request&, const std::string&, httplib::Response& r) {
              answer(r, 200,
                     json{{"object", "list"},
                          {"data", json::array({json{{"id", name_},
                                                     {"object", "model"},
                                                     {"created", started_},
                                                     {"owned_by", "qllm"},
                                                     {"qllm", {{"weights", model_->weight_mix()},
                                                               {"n_ctx_per_slot", engine_->n_ctx()},
                                                               {"slots", engine_->n_slots()},
                                                               {"isa", model_->isa()}}}}})}});
            }));
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    if (draining_) {
      r.set_header("Retry-After", "1");
      answer_uncounted(r, 503, json{{"status", "shutting down"}});
    } else {
      const auto st = engine_->get_stats();
      answer_uncounted(r, 200, json{{"status", "ok"}, {"active_slots", st.active}, {"queue_depth", st.waiting}});
    }
  });
  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    r.status = 200;
    r.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  http_.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own answer
    std::string msg;
    switch (res.status) {
      case 404: msg = "no such endpoint: " + req.method + " " + req.path; break;
      case 413: msg = "the request body is larger than the server's limit of " + std::to_string(o_.max_body) + " bytes"; break;
      case 405: msg = "method not allowed"; break;
      default: msg = "HTTP " + std::to_string(res.status); break;
    }
    // what httplib met while reading the request, as the connection saw it
    if (conn_stream* c = current_conn(); c && res.status == 400) {
      c->close_after_response();
      if (c->over_budget() && !c->in_body()) {
        res.status = 431;
        msg = "the request line and headers are larger than the server's limit of " + std::to_string(head_limit) + " bytes";
      } else if (c->starved() && !c->in_body()) {
        msg = "the request's headers ended early (the connection closed or the read timed out)";
      } else {
        msg = "the request is not valid HTTP/1.1";
      }
    }
    const int status = res.status;
    answer(res, status, error_body(http_error{status, msg, "invalid_request_error", "", ""}));
  });
  // framing checked before any body is read, for the endpoints above only
  http_.install_framing_hooks({{"POST", "/v1/completions"}, {"POST", "/v1/chat/completions"},
                               {"POST", "/v1/embeddings"}, {"GET", "/v1/models"}, {"GET", "/health"},
                               {"GET", "/metrics"}},
                              [this](httplib::Response& res, const framing_verdict& v) {
                                fail(res, http_error{v.status, v.message, "invalid_request_error", "", ""});
                              });
  http_.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    answer(res, 500, error_body(http_error{500, "internal error", "server_error", "", ""}));
  });
}

int server::run() {
  // SIGTERM and SIGINT go to one waiting thread: blocked here, before any thread starts
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a signal

  if (!o_.api_key_file.empty()) {
    std::ifstream f(o_.api_key_file);
    if (!f) throw error(errc::io, "cannot read the API key file " + o_.api_key_file);
    std::getline(f, key_);
    while (!key_.empty() && (key_.back() == '\r' || key_.back() == ' ' || key_.back() == '\t')) key_.pop_back();
    while (!key_.empty() && (key_.front() == ' ' || key_.front() == '\t')) key_.erase(0, 1);
    if (key_.empty()) throw error(errc::invalid_argument, "the API key file " + o_.api_key_file + " holds no key");
  }
  model_options mo;
  mo.n_threads = o_.n_threads;
  mo.isa = o_.isa;
  model_ = model::load(o_.model_path, mo);
  tok_ = model_->get_tokenizer();
  if (!tok_) throw error(errc::unsupported, "the model file has no vocabulary: qllm serve needs one");
  name_ = o_.model_name;
  if (name_.empty()) {
    name_ = std::filesystem::path(o_.model_path).filename().string();
    if (name_.size() > 5 && name_.compare(name_.size() - 5, 5, ".gguf") == 0) name_.resize(name_.size() - 5);
  }
  if (const int64_t train = model_->config().n_ctx_train; train > 0 && o_.n_ctx > train)
    std::fprintf(stderr,
                 "qllm serve: warning: the window of %lld tokens per slot is longer than the model's training context "
                 "of %lld; past position %lld its output may degrade (memory for the window is committed as it fills)\n",
                 (long long)o_.n_ctx, (long long)train, (long long)train);
  engine_params ep;
  ep.ctx.n_ctx = o_.n_ctx;
  ep.ctx.n_batch = std::max<int64_t>(o_.n_batch, o_.parallel);
  ep.ctx.n_threads = o_.n_threads;
  ep.n_slots = o_.parallel;
  ep.max_waiting = o_.max_queue;
  ep.prompt_chunk = o_.prompt_chunk;
  engine_ = std::make_unique<engine>(model_, ep);
  context_params ecp;
  ecp.n_ctx = engine_->n_ctx();
  ecp.n_batch = std::min<int64_t>(o_.n_batch, ecp.n_ctx);
  ecp.n_threads = o_.n_threads;
  embed_ctx_ = std::make_unique<context>(model_, ecp);

  const int threads = o_.http_threads > 0 ? o_.http_threads : int(std::min<int64_t>(1024, o_.parallel + o_.max_queue + 8));
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(std::size_t(threads)); };
  http_.set_payload_max_length(std::size_t(o_.max_body));
  http_.set_timeouts(o_.read_timeout, o_.read_timeout, 5);
  http_.set_keep_alive_max_count(1000);  // requests per connection (pipelined or not)
  route();
  int port = o_.port;
  if (port == 0) {
    port = http_.bind_to_any_port(o_.host);
    if (port < 0) throw error(errc::io, "cannot listen on " + o_.host + " (any port)");
  } else if (!http_.bind_to_port(o_.host, port)) {
    throw error(errc::io, "cannot listen on " + o_.host + ":" + std::to_string(port) + " (in use, or not an address here)");
  }
  const bool v6 = o_.host.find(':') != std::string::npos;
  std::fprintf(stderr, "qllm serve: listening on http://%s%s%s:%d (model %s, %d slots)\n", v6 ? "[" : "",
               o_.host.c_str(), v6 ? "]" : "", port, name_.c_str(), engine_->n_slots());
  std::fflush(stderr);

  std::atomic<bool> listen_done{false}, signalled{false};
  std::thread waiter([this, sigs, &listen_done, &signalled] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (listen_done) return;  // woken because listening ended on its own
    signalled = true;
    std::fprintf(stderr, "qllm serve: %s: draining (grace %g s)\n", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                 o_.shutdown_grace);
    std::fflush(stderr);
    // New requests are answered 503 (and /health says so, for load balancers) while the running
    // ones finish, up to the grace period; then their last events are written, and only then does
    // the listener close (httplib stops writing streams once it is stopped).
    draining_ = true;
    engine_->shutdown(std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o_.shutdown_grace)));
    auto until = clock::now() + std::chrono::seconds(5);
    while (in_flight_.load() > 0 && clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    http_.stop();
    // httplib joins its connection threads; a client that keeps a connection open without
    // finishing its request (a slow or stalled sender) must not hold the exit beyond this
    until = clock::now() + std::chrono::seconds(5);
    while (!listen_done && clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!listen_done) {
      std::fprintf(stderr, "qllm serve: connections still open 5 s after the drain: exiting\n");
      std::fflush(stderr);
      std::_Exit(0);
    }
  });
  const bool ok = http_.listen_after_bind();
  listen_done = true;
  if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);  // wake the waiter: it returns
  waiter.join();
  engine_.reset();  // cancels what is left, joins its thread
  if (!signalled) {
    std::fprintf(stderr, "qllm serve: stopped listening on its own (accept failed)\n");
    return 1;
  }
  std::fprintf(stderr, "qllm serve: stopped\n");
  (void)ok;
  return 0;
}

}  // namespace

int run(const options& o) {
  server s(o);
  return s.run();
}

}  // namespace qllm::serve
