// qllm serve: an OpenAI-compatible HTTP server over the continuous-batching engine. Linked into
// the qllm tool only (libqllm.so carries no HTTP stack).
#pragma once
#include <cstdint>
#include <string>

namespace qllm::serve {

struct options {
  std::string model_path;
  std::string model_name;        // the id in /v1/models and responses; default: file name without .gguf
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (printed when listening)
  int parallel = 4;              // slots: requests decoded together
  int64_t n_ctx = 0;             // window per slot; 0: the model's training context
  int64_t n_batch = 512;         // tokens per forward pass, all slots together
  int n_threads = 0;             // 0: OpenMP's default (cgroup quota aware)
  std::string isa;               // kernel table; empty: the best for this CPU
  std::string api_key_file;      // non-empty: every /v1 request needs "Authorization: Bearer KEY"
  int64_t max_queue = 64;        // requests waiting beyond the slots; more: 429
  int64_t prompt_chunk = 64;     // prompt tokens per step while others decode
  int32_t draft_tokens = 0;      // speculation by prompt lookup for requests that do not say (0: off)
  int64_t max_body = 1 << 20;    // request body bytes; more: 413
  int64_t max_prompt_tokens = 0; // 0: the window
  double request_timeout = 600;  // seconds a request may take in all (then cancelled: 504 or stream end)
  int read_timeout = 30;         // seconds to wait for a slow client's request or its reading
  double shutdown_grace = 30;    // SIGTERM: seconds running requests may still take
  int http_threads = 0;          // 0: parallel + max_queue + 8
};

// Loads the model, listens, serves until SIGTERM or SIGINT, drains and returns 0. Errors before
// listening (model, port in use, key file) throw qllm::error.
int run(const options& o);

}  // namespace qllm::serve
