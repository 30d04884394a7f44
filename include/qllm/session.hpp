// Text in, text out: a session owns a context (KV cache) and a sampler, fits prompts into the
// window by an explicit policy, and streams generated text.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qllm/model.hpp"
#include "qllm/sampler.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm {

// What happens when a sequence does not fit n_ctx with room for the tokens to generate.
enum class context_policy : uint32_t {
  error = 0,               // errc::context_overflow, saying by how much (the default)
  keep_head_and_tail = 1,  // keep the first n_keep tokens (BOS, system prompt) and the newest
  keep_tail = 2,           // keep the newest tokens
};

enum class finish_reason : uint32_t { eos = 0, stop_string = 1, max_tokens = 2, cancelled = 3, context_full = 4 };

const char* to_string(context_policy p) noexcept;
const char* to_string(finish_reason r) noexcept;
// "error", "keep-head-and-tail" (or "keep_head_and_tail"), "keep-tail"; else errc::invalid_argument.
context_policy parse_context_policy(std::string_view s);

struct session_params {
  context_params ctx;
  sampler_params sampling;
  context_policy policy = context_policy::error;
  // Tokens at the start of the sequence (BOS included) that keep_head_and_tail and the context
  // shift never drop, e.g. BOS + a system prompt.
  int64_t n_keep = 1;
  // When generation fills the KV cache: drop half of the tokens after n_keep, re-rotate the kept
  // keys and go on (true), or stop with finish_reason::context_full (false).
  bool context_shift = true;
};

// What the context policy did to a sequence, in positions of the sequence as given.
struct prompt_fit {
  int64_t n_tokens = 0;    // tokens before the policy
  int64_t n_dropped = 0;   // tokens removed: [drop_begin, drop_end)
  int64_t drop_begin = 0;
  int64_t drop_end = 0;
};

// Fits `tokens` into a window of n_ctx with room for n_reserve more: nothing changes when they
// fit; otherwise the error policy throws errc::context_overflow saying how many tokens too many,
// and the others drop tokens (keep_head_and_tail keeps the first n_keep) and report what.
// errc::invalid_argument when n_reserve does not leave room for a prompt.
prompt_fit fit_prompt(std::vector<int32_t>& tokens, int64_t n_ctx, int64_t n_reserve, context_policy policy,
                      int64_t n_keep);

struct generate_params {
  // < 0: until EOS, a stop string or a full context. The prompt is fitted to leave room for
  // max_tokens (at most n_ctx / 2 when context shift is on: later tokens come from shifts).
  int64_t max_tokens = 256;
  std::vector<std::string> stop;  // matched across token boundaries; never emitted
  bool stop_at_eos = true;
  // Speculative decoding by prompt lookup: up to this many draft tokens, taken from where the
  // sequence's last 2-4 tokens occurred before (in the prompt or the text so far), are checked
  // in the same forward pass as the sampled token, and every one the model would have chosen
  // itself is kept. The output is the same token for token; only greedy sampling (temperature
  // <= 0 or top_k 1) speculates, other settings decode one token per pass. 0: off.
  int32_t draft_tokens = 0;
};

// What speculation did in one generation (all 0 when it was off).
struct speculation_stats {
  int64_t passes = 0;    // forward passes that carried drafts
  int64_t drafted = 0;   // draft tokens evaluated
  int64_t accepted = 0;  // of those, the ones generation kept
};

struct generation_timings {
  int64_t n_prompt = 0;     // tokens evaluated for the prompt
  int64_t n_reused = 0;     // prompt tokens whose KV entries were already in the cache
  int64_t n_generated = 0;  // tokens sampled
  double prompt_seconds = 0, generation_seconds = 0;
  double prompt_tokens_per_second() const noexcept { return prompt_seconds > 0 ? double(n_prompt) / prompt_seconds : 0; }
  double generation_tokens_per_second() const noexcept {
    return generation_seconds > 0 ? double(n_generated) / generation_seconds : 0;
  }
};

struct generation_result {
  std::string text;              // the generated text, stop string excluded
  std::vector<int32_t> tokens;   // the sampled tokens (EOS excluded)
  finish_reason finish = finish_reason::max_tokens;
  prompt_fit fit;                // the policy's report on the sequence
  int64_t n_shifts = 0;          // context shifts during generation
  int64_t n_shift_dropped = 0;   // tokens they dropped
  generation_timings timings;
  speculation_stats spec;
};

// Streaming: called once per sampled token with the text that became complete (may be empty
// while a character or a possible stop string is held back), and once at the end with
// token -1 for what was held. Return false to stop (finish_reason::cancelled).
using token_callback = std::function<bool(std::string_view text, int32_t token)>;

// One sequence; one thread at a time. The model may be shared by many sessions.
class session {
 public:
  explicit session(std::shared_ptr<const model> m, const session_params& p = {});
  ~session();

  // The model's vocabulary; errc::unsupported if the file has none.
  const tokenizer& tok() const;
  std::vector<int32_t> tokenize(std::string_view text, bool add_bos) const { return tok().encode(text, add_bos); }

  // Applies the session's policy to `tokens` so that it leaves room for n_reserve more tokens
  // in the window. error policy: errc::context_overflow with the numbers.
  prompt_fit fit(std::vector<int32_t>& tokens, int64_t n_reserve) const;
  // The room generate() leaves for gp (see generate_params::max_tokens).
  int64_t reserve_for(const generate_params& gp) const;

  // Generates after `sequence`, the whole text the model should see (e.g. a whole chat so far).
  // Only the part that differs from what the cache holds is evaluated. A model without a
  // vocabulary generates token ids only (empty text, no EOS stop; stop strings: unsupported).
  generation_result generate(std::vector<int32_t> sequence, const generate_params& gp, const token_callback& cb = {});
  // The same for text, tokenized with BOS as the model's vocabulary asks.
  generation_result generate(std::string_view prompt, const generate_params& gp, const token_callback& cb = {});

  // Evaluates `sequence` like generate() (policy, cache reuse) and returns the logits of its last token.
  std::span<const float> evaluate(std::vector<int32_t> sequence, prompt_fit* fit = nullptr);
  // Evaluates `tokens` after history() (a token-by-token loop costs one forward pass per token).
  // When they do not fit the window and context_shift is on, the cache shifts first exactly as
  // generation does (keep n_keep, drop half of the rest or what the tokens need). Otherwise the
  // error policy throws errc::context_overflow describing the eval, and the other policies
  // re-fit history() + tokens like evaluate().
  std::span<const float> append(std::span<const int32_t> tokens);
  // Samples from `logits` with the penalty window set to the end of history() (the tokens in
  // the cache), as generate() does before every token: an eval + sample loop picks the same
  // tokens as generate() with the same parameters and seed.
  int32_t sample(std::span<const float> logits);

  // Stops the call in progress (generate, evaluate, append) at its next check: before
  // each chunk of n_batch prompt tokens and before each generated token. generate() then returns
  // finish_reason::cancelled (with the tokens generated so far); evaluate and append throw
  // errc::cancelled. The cache stays consistent and history() says what it holds: what it held
  // before the call, or, where the call had already replaced part of it (another sequence, a
  // context policy, a shift), only the part that call kept. Each call clears the request when
  // it starts, so a cancel while nothing runs has no effect. Thread-safe and async-signal-safe (one
  // lock-free atomic store): the one session function another thread may call during a call.
  void cancel() noexcept { cancel_.store(true, std::memory_order_relaxed); }
  // A cancel request not yet taken by a call (one that arrived after the last call returned): lets
  // a sequence of calls (chain of thought's two stages) stop between them.
  bool cancel_requested() const noexcept { return cancel_.load(std::memory_order_relaxed); }

  int64_t n_shifts() const noexcept { return n_shifts_; }            // context shifts so far
  int64_t n_shift_dropped() const noexcept { return n_shift_dropped_; }  // tokens they dropped

  // Embedding of `tokens` (context::embed); afterwards the cache holds exactly these tokens.
  std::vector<float> embed(const std::vector<int32_t>& tokens);

  const std::vector<int32_t>& history() const noexcept { return history_; }  // tokens in the cache
  void reset();  // empty cache, sampler history reset and reseeded
  // New sampling settings from the next token on (reseeded with p.seed; the penalties go on
  // counting the end of history(), as sample() always does).
  // Invalid settings: errc::invalid_argument and the old sampler stays.
  void set_sampling(const sampler_params& p);
  const session_params& params() const noexcept { return p_; }
  context& ctx() noexcept { return ctx_; }
  sampler& smp() noexcept { return smp_; }
  const model& get_model() const noexcept { return *model_; }

 private:
  std::span<const float> sync(std::vector<int32_t>& seq, int64_t n_reserve, prompt_fit& fit, generation_timings& t);
  int64_t shift_for(int64_t n_new);  // shifts the cache so n_new more tokens fit; returns the drop
  int64_t shift_keep() const noexcept;
  std::span<const float> evaluate_uncleared(std::vector<int32_t> sequence, prompt_fit* fit);
  void check_ids(std::span<const int32_t> tokens) const;
  std::shared_ptr<const model> model_;
  session_params p_;
  context ctx_;
  sampler smp_;
  std::vector<int32_t> history_;
  std::atomic<bool> cancel_{false};
  int64_t n_shifts_ = 0, n_shift_dropped_ = 0;
};

// Llama-2-chat, as Meta's reference code builds it: an optional system message folded into the
// first user message inside <<SYS>> ... <</SYS>>, each finished exchange
// "<s>[INST] user [/INST] answer </s>", and the last user message "<s>[INST] user [/INST]";
// each segment encoded on its own, contents stripped of surrounding whitespace.
struct chat_message {
  std::string role;  // "system" (first only), "user", "assistant", alternating, ending with "user"
  std::string content;
};
std::vector<int32_t> chat_tokens(const tokenizer& tok, std::span<const chat_message> dialog);
// The same dialog as text with <s> and </s> written out, for display and debugging.
std::string chat_text(std::span<const chat_message> dialog);
// Tokens of the leading system block ("<s>[INST] <<SYS>>\n...\n<</SYS>>\n\n"): a good n_keep.
int64_t chat_system_tokens(const tokenizer& tok, std::string_view system);


// Chain-of-thought by prompt chaining: the model first reasons after a cue ("Let's think step by
// step."), then a second, short generation extracts the answer from that reasoning. The reasoning
// is returned apart from the answer, never inside it.
struct cot_params {
  std::string reasoning_cue = "Let's think step by step.";
  // Plain text: written after the reasoning on a new line; the answer stage stops at a newline.
  std::string answer_cue = "Therefore, the answer is";
  // Chat: the user message after the reasoning turn; the answer stage stops at EOS.
  std::string answer_request = "Now give only the final answer, in one or two sentences, without the steps.";
  int64_t answer_tokens = 64;  // max tokens of the answer stage (> 0)
};

struct cot_result {
  generation_result reasoning;  // stage 1 (the reasoning; its max_tokens is the caller's)
  generation_result answer;     // stage 2; empty with finish cancelled when stage 1 was cancelled
};

// Plain text: stage 1 continues `prompt` + " " + reasoning_cue; stage 2 continues that text, the
// reasoning and "\n" + answer_cue. The session's cache keeps the shared prefix between stages.
// Both stages fit the window: the reasoning gets at most the room the window leaves after its
// prompt and the answer stage (cot_answer_reserve), fewer than gp.max_tokens if need be (its
// finish is then max_tokens), and no context shift happens in either stage. A cancel during
// stage 1 or between the stages skips stage 2.
// Errors: as session::generate; context_overflow when the prompt leaves no room for both stages
// (saying how many tokens too many); invalid_argument for answer_tokens <= 0 or an empty cue.
cot_result generate_cot(session& s, std::string_view prompt, const generate_params& gp, const cot_params& cp,
                        const token_callback& on_reasoning = {}, const token_callback& on_answer = {});
// Chat: stage 1 answers the dialog with reasoning_cue appended to its last user message; stage 2
// answers answer_request after that reasoning turn.
cot_result chat_cot(session& s, std::span<const chat_message> dialog, const generate_params& gp, const cot_params& cp,
                    const token_callback& on_reasoning = {}, const token_callback& on_answer = {});
// Room the answer stage needs in the window beyond the reasoning: answer_tokens plus the tokens of
// the cue or request and its chat template (an upper bound used to budget prompts).
int64_t cot_answer_reserve(const tokenizer& tok, const cot_params& cp);

}  // namespace qllm
