// The sampler chain, in llama.cpp's order: penalties, top-k, top-p and min-p on the untempered
// distribution, then temperature, then a draw. Uniform numbers come from the engine's raw bits
// (not std::uniform_real_distribution, whose output differs between standard libraries).
#include "qllm/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "qllm/error.hpp"

namespace qllm {

namespace {
[[noreturn]] void bad(const std::string& what) { throw error(errc::invalid_argument, "sampler: " + what); }
}  // namespace

sampler::sampler(const sampler_params& p) : p_(p), rng_(p.seed) {
  if (std::isnan(p.temperature)) bad("temperature is NaN");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) bad("min_p must be in [0, 1)");
  if (!(p.repeat_penalty > 0.0f && std::isfinite(p.repeat_penalty))) bad("repeat_penalty must be > 0");
  if (!std::isfinite(p.frequency_penalty) || !std::isfinite(p.presence_penalty)) bad("penalties must be finite");
  if (p.penalty_last_n < 0) bad("penalty_last_n must be >= 0");
  for (const auto& [t, b] : p.logit_bias) {
    if (t < 0) bad("logit_bias names token " + std::to_string(t));
    if (std::isnan(b) || b == INFINITY) bad("logit_bias must be finite or -inf");
  }
  history_.reserve(std::size_t(p.penalty_last_n));
}

void sampler::reset() {
  clear_history();
  rng_.seed(p_.seed);
}

void sampler::clear_history() {
  history_.clear();
  history_pos_ = 0;
}

void sampler::set_window(std::span<const int32_t> seq) {
  clear_history();
  const std::size_t n = std::min(seq.size(), std::size_t(p_.penalty_last_n));
  for (std::size_t i = seq.size() - n; i < seq.size(); ++i) accept(seq[i]);
}

void sampler::accept(int32_t token) {
  if (p_.penalty_last_n == 0) return;
  if (history_.size() < std::size_t(p_.penalty_last_n)) {
    history_.push_back(token);
  } else {
    history_[history_pos_] = token;
    history_pos_ = (history_pos_ + 1) % history_.size();
  }
}

void sampler::distribution(std::span<const float> logits) {
  const std::size_t n = logits.size();
  if (n == 0) bad("no logits");
  bool any = false;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = logits[i];
    if (std::isnan(v) || v == INFINITY) bad("logit " + std::to_string(i) + " is " + (std::isnan(v) ? "NaN" : "+inf"));
    any |= v != -INFINITY;
  }
  if (!any) bad("every logit is -inf");

  adjusted_.assign(logits.begin(), logits.end());
  const bool penalize = !history_.empty() && (p_.repeat_penalty != 1.0f || p_.frequency_penalty != 0.0f ||
                                               p_.presence_penalty != 0.0f);
  if (penalize) {
    counts_.assign(n, 0);  // no allocation after the first call: capacity is kept
    for (int32_t t : history_)
      if (t >= 0 && std::size_t(t) < n) ++counts_[std::size_t(t)];
    for (int32_t t : history_) {
      if (t < 0 || std::size_t(t) >= n || counts_[std::size_t(t)] == 0) continue;
      float& v = adjusted_[std::size_t(t)];
      const float c = float(counts_[std::size_t(t)]);
      v = v > 0.0f ? v / p_.repeat_penalty : v * p_.repeat_penalty;
      v -= c * p_.frequency_penalty + p_.presence_penalty;
      counts_[std::size_t(t)] = 0;  // once per distinct token
    }
  }

  if (!p_.logit_bias.empty()) {
    for (const auto& [t, b] : p_.logit_bias) {
      if (std::size_t(t) >= n) bad("logit_bias names token " + std::to_string(t) + " outside the vocabulary");
      adjusted_[std::size_t(t)] += b;
    }
    bool left = false;
    for (float v : adjusted_) left |= v != -INFINITY;
    if (!left) bad("logit_bias removed every token");
  }

  kept_.clear();
  if (p_.temperature <= 0.0f || p_.top_k == 1) {
    int32_t token = 0;
    for (std::size_t i = 1; i < n; ++i)
      if (adjusted_[i] > adjusted_[std::size_t(token)]) token = int32_t(i);
    kept_.emplace_back(token, 1.0f);
    return;
  }

  cand_.resize(n);
  for (std::size_t i = 0; i < n; ++i) cand_[i] = {int32_t(i), adjusted_[i]};
  const auto by_logit = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  std::size_t k = p_.top_k > 0 ? std::min<std::size_t>(std::size_t(p_.top_k), n) : n;
  std::partial_sort(cand_.begin(), cand_.begin() + std::ptrdiff_t(k), cand_.end(), by_logit);
  while (k > 1 && cand_[k - 1].second == -INFINITY) --k;

  // softmax at temperature 1 for top-p / min-p
  const double max = cand_[0].second;
  double sum = 0;
  for (std::size_t i = 0; i < k; ++i) sum += std::exp(double(cand_[i].second) - max);
  std::size_t keep = k;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    for (std::size_t i = 0; i < k; ++i) {
      cum += std::exp(double(cand_[i].second) - max) / sum;
      if (cum >= double(p_.top_p)) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p_.min_p > 0.0f) {
    const double floor = double(p_.min_p);  // relative to the best token, whose p/p_max = 1
    std::size_t i = 1;
    while (i < keep && std::exp(double(cand_[i].second) - max) >= floor) ++i;
    keep = i;
  }

  // temperature, renormalise, draw
  double total = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    const double w = std::exp((double(cand_[i].second) - max) / double(p_.temperature));
    kept_.emplace_back(cand_[i].first, float(w));
    total += w;
  }
  for (auto& c : kept_) c.second = float(double(c.second) / total);
}

double sampler::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int32_t sampler::draw(std::span<const std::pair<int32_t, float>> dist, double total) {
  const double u = uniform() * total;
  double cum = 0;
  // u past the rounded sum: the last token with a weight (not one that underflowed to 0)
  int32_t token = dist.back().first;
  for (auto it = dist.rbegin(); it != dist.rend(); ++it)
    if (it->second > 0) {
      token = it->first;
      break;
    }
  for (const auto& c : dist) {
    cum += c.second;
    if (u < cum) {
      token = c.first;
      break;
    }
  }
  return token;
}

int32_t sampler::sample(std::span<const float> logits) {
  distribution(logits);
  // greedy draws nothing from the random stream
  const int32_t token = kept_.size() == 1 && (p_.temperature <= 0.0f || p_.top_k == 1) ? kept_[0].first : draw(kept_, 1.0);
  accept(token);
  return token;
}

int32_t sampler::sample_draft(std::span<const float> logits, int32_t x, std::span<const std::pair<int32_t, float>> q) {
  distribution(logits);
  const std::size_t n = logits.size();
  double qx = 0;
  for (const auto& [t, v] : q) {
    if (t < 0 || std::size_t(t) >= n) bad("draft distribution names token " + std::to_string(t) + " outside the vocabulary");
    if (t == x) qx = v;
  }
  double px = 0;
  for (const auto& [t, v] : kept_)
    if (t == x) px = v;
  int32_t token = x;
  // keep x with probability min(1, p(x) / q(x)) (no draw when p(x) >= q(x)); a draft q gives no
  // probability (drawn by a rounding fallback) is rejected
  if (!(qx > 0) || (px < qx && !(uniform() * qx < px))) {
    // rejected: draw from max(0, p - q), which is zero outside p's support and at x
    q_.resize(n, 0.0f);
    for (const auto& [t, v] : q) q_[std::size_t(t)] = v;
    cand_.clear();
    double total = 0;
    for (const auto& [t, v] : kept_) {
      const float r = v - q_[std::size_t(t)];
      if (r > 0) {
        cand_.emplace_back(t, r);
        total += r;
      }
    }
    for (const auto& [t, v] : q) q_[std::size_t(t)] = 0.0f;
    // p - q can be positive nowhere only when p == q up to rounding, where x was kept above
    token = cand_.empty() ? draw(kept_, 1.0) : draw(cand_, total);
  }
  accept(token);
  return token;
}

}  // namespace qllm
