// qllm serve: HTTP (cpp-httplib) and JSON (nlohmann) over qllm::engine: setup, routing, shutdown,
// authentication, /v1/embeddings, /v1/models, /health and /metrics. The completion endpoints are in
// completion.cpp.
//
// Each HTTP request runs on one of httplib's pool threads.
#include "serve/server.hpp"

#include "serve/server_impl.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "omp_compat.hpp"
#include "qllm/engine.hpp"
#include "qllm/error.hpp"
#include "qllm/model.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm::serve {
namespace detail {

void server::answer(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
  met_.count(status);
}

// /health and /metrics: not counted in qllm_requests_total (load balancers and scrapers poll them)
static void answer_uncounted(httplib::Response& res, int status, const json& body) {
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

void server::embeddings(const std::string& req_body, httplib::Response& res) {
  in_flight_guard flight(in_flight_);
  const release_omp_workers_at_exit release;  // this HTTP thread keeps no workers beside the engine's
  if (draining_) throw http_error{503, "the server is shutting down", "server_error", "shutting_down", ""};
  // nlohmann's parser stops at a NUL byte: what follows one would be ignored, not refused
  json body = req_body.find('\0') == std::string::npos ? json::parse(req_body, nullptr, false) : json(json::value_t::discarded);
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

}  // namespace detail

int run(const options& o) {
  detail::server s(o);
  return s.run();
}

}  // namespace qllm::serve
