// Continuous batching: many requests share one model through a fixed set of slots (sequences of
// one batch_context). Each step is one forward pass that runs the next token of every decoding
// request together with chunks of waiting prompts, so weights stream from memory once per step
// for all of them and a long prompt never stalls the others for more than a chunk. A request's
// tokens do not depend on what else runs: greedy output (and seeded sampling) is the same alone
// or batched, bit for bit, and the same as session::generate's on a fresh session.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "qllm/model.hpp"
#include "qllm/sampler.hpp"
#include "qllm/session.hpp"

namespace qllm {

struct engine_params {
  // ctx.n_ctx: each slot's window (0 = the model's training context); ctx.n_batch: tokens per
  // step, all slots together (>= n_slots); ctx.n_threads; ctx.kv.
  context_params ctx;
  int n_slots = 4;            // requests decoded together (1 .. 256)
  int64_t max_waiting = 64;   // requests queued beyond the slots (0 .. 1e6); more: errc::busy
  // Prompt tokens one request may run in a step while other requests are decoding (>= 1): the
  // stall a new prompt imposes on running streams. Alone, a prompt takes all of n_batch.
  int64_t prompt_chunk = 64;
};

struct engine_result {
  generation_result gen;           // text, tokens, finish, fit, timings (prompt and generation)
  double queue_seconds = 0;        // submit to its slot
  double first_token_seconds = 0;  // submit to its first sampled token (0 if none)
  std::string error;               // non-empty: the request failed (gen.finish is cancelled)
};

struct engine_request {
  std::vector<int32_t> prompt;  // the whole sequence to continue (BOS included when wanted)
  sampler_params sampling;
  // max_tokens < 0: until EOS, a stop string or a full window. No context shift: a request that
  // fills its window ends with finish_reason::context_full.
  generate_params gen;
  // How the prompt is fitted into the window with room for max_tokens (all of them; 1 when
  // max_tokens < 0): fit_prompt's rules and messages.
  context_policy policy = context_policy::error;
  int64_t n_keep = 1;
  // Called on the engine's thread, as session::generate's callback: once per sampled token with
  // the text that became complete, once at the end with token -1 (not after a cancel). Return
  // false to cancel. It must not block for long: every request waits for it.
  token_callback on_token;
  // Called on the engine's thread exactly once, when the request ends for any reason.
  std::function<void(const engine_result&)> on_done;
};

class engine {
 public:
  // Allocates the slots' KV caches and starts the engine's thread. Errors: batch_context's, and
  // errc::invalid_argument for bad parameters.
  engine(std::shared_ptr<const model> m, const engine_params& p);
  ~engine();  // cancels what runs or waits (on_done is called for each) and joins the thread
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  struct submitted {
    uint64_t id = 0;
    prompt_fit fit;  // what the context policy did to the prompt
  };
  // Checks the request and queues it; thread-safe. Errors, before anything is queued:
  // errc::invalid_argument (empty prompt, token outside the vocabulary, bad sampling settings,
  // empty or invalid stop string), errc::unsupported (stop strings without a vocabulary),
  // errc::context_overflow (error policy: fit_prompt's message), errc::busy (queue full or
  // shutting down).
  submitted submit(engine_request r);
  // Stops a request at the next step (its on_done reports finish cancelled). Thread-safe;
  // unknown or finished ids are ignored.
  void cancel(uint64_t id) noexcept;
  // Stops accepting (submit: errc::busy), lets running and queued requests finish until
  // `deadline`, cancels what is left, and returns when nothing runs. Thread-safe.
  void shutdown(std::chrono::steady_clock::duration deadline);

  struct stats {
    int active = 0;            // requests in slots
    int64_t waiting = 0;       // requests queued
    uint64_t submitted = 0;    // accepted since start
    uint64_t finished = 0;     // ended (any reason)
    uint64_t prompt_tokens = 0;     // evaluated for prompts (cached prefixes not counted)
    uint64_t generated_tokens = 0;  // sampled
    uint64_t steps = 0;             // forward passes
  };
  stats get_stats() const;
  int n_slots() const noexcept { return p_.n_slots; }
  int64_t n_ctx() const noexcept;
  const model& get_model() const noexcept { return *model_; }

 private:
  struct slot;
  struct pending;
  void run();
  void step(std::vector<slot*>& active);
  void finish(slot& s, const std::string& err);
  // Samples the request's next token from `logits` and handles it (stream, stops, limits); the
  // token, or -1 when the request finished.
  int32_t sample_from(slot& s, std::span<const float> logits, const tokenizer* tk, int64_t n_ctx);
  std::shared_ptr<const model> model_;
  engine_params p_;
  std::unique_ptr<batch_context> batch_;
  std::vector<std::unique_ptr<slot>> slots_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::unique_ptr<pending>> waiting_;
  std::unordered_map<uint64_t, std::shared_ptr<std::atomic<bool>>> cancel_flags_;
  uint64_t next_id_ = 1;
  bool stop_ = false, draining_ = false;
  int active_ = 0;
  int finishing_ = 0;  // requests whose on_done is running
  stats st_;
  std::thread thread_;
};

}  // namespace qllm
