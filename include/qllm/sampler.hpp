// Token sampling: repetition penalties, then top-k, top-p, min-p, temperature and a seeded draw.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <span>
#include <vector>

namespace qllm {

struct sampler_params {
  float temperature = 0.8f;        // <= 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 40;              // <= 0: the whole vocabulary
  float top_p = 0.95f;             // (0, 1]; 1 keeps everything
  float min_p = 0.05f;             // [0, 1): drop tokens below min_p x the best probability
  float repeat_penalty = 1.0f;     // > 0; 1 = off. Divides positive logits, multiplies negative
  float frequency_penalty = 0.0f;  // subtracted once per occurrence in the window
  float presence_penalty = 0.0f;   // subtracted once if the token occurs in the window
  int32_t penalty_last_n = 64;     // window of recent tokens the penalties look at (0 = off)
  uint64_t seed = 0x5eed;          // same seed and inputs -> same tokens, on any machine
  // Added to the logits after the penalties; -inf bans a token. Entries: (token, bias).
  std::vector<std::pair<int32_t, float>> logit_bias;
};

// One sequence's sampler; one thread at a time. Working buffers grow once to the vocabulary size
// and are reused, so sampling in the decode loop does not allocate after the first call.
class sampler {
 public:
  // Throws qllm::error(errc::invalid_argument) naming the out-of-range field.
  explicit sampler(const sampler_params& p);

  // Picks a token from logits[n_vocab] and records it for the penalties.
  // Throws errc::invalid_argument for empty logits, NaN or +inf, or all -inf.
  int32_t sample(std::span<const float> logits);
  // Speculative sampling's acceptance rule: `x` is a draft token drawn from the distribution `q`
  // ((token, q) pairs summing to 1, e.g. a draft model's last_candidates()), and p is the
  // distribution sample() would draw from for `logits`. Keeps x with probability
  // min(1, p(x) / q(x)); otherwise draws from max(0, p - q) renormalised. The token returned is
  // distributed exactly as sample()'s, whatever q is; it is recorded for the penalties.
  // last_candidates() is p afterwards. A draft q gives no probability is rejected. Errors as
  // sample(), and errc::invalid_argument for a token of q outside the vocabulary.
  int32_t sample_draft(std::span<const float> logits, int32_t x, std::span<const std::pair<int32_t, float>> q);
  // Records a token that was not sampled (e.g. the prompt) for the penalties.
  void accept(int32_t token);
  void reset();  // forget the history and reseed
  void clear_history();  // forget the penalty window only (the random stream goes on)
  // The penalty window becomes the end of `seq` (its last penalty_last_n tokens), as if only they
  // had been accepted; the random stream goes on.
  void set_window(std::span<const int32_t> seq);

  // The probabilities the last sample drew from: (token, p) pairs after every filter, p summing
  // to 1, highest first (greedy: one pair). For tests and diagnostics.
  std::span<const std::pair<int32_t, float>> last_candidates() const noexcept { return kept_; }
  // The tokens the penalties currently count (the window, in ring order). For tests/diagnostics.
  std::span<const int32_t> window() const noexcept { return history_; }

 private:
  sampler_params p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> history_;  // ring of the last penalty_last_n tokens
  std::size_t history_pos_ = 0;
  std::vector<float> adjusted_;
  std::vector<std::pair<int32_t, float>> cand_;
  std::vector<std::pair<int32_t, float>> kept_;
  std::vector<uint32_t> counts_;
  std::vector<float> q_;  // sample_draft: q by token, zero outside the draft's support

  void distribution(std::span<const float> logits);  // fills kept_ (every step but the draw)
  double uniform();                                  // [0, 1), 53 bits of the engine
  int32_t draw(std::span<const std::pair<int32_t, float>> dist, double total);
};

}  // namespace qllm
