#include "session/lookup.hpp"

#include <algorithm>

namespace qllm::detail {

std::vector<int32_t> lookup_draft(std::span<const int32_t> seq, int n_min, int n_max, int k) {
  const int64_t len = int64_t(seq.size());
  if (k <= 0 || n_min <= 0 || n_max < n_min || len < 2) return {};
  // One backward pass over the places an earlier occurrence can end (e, followed by seq[e]): the
  // length of the match with the suffix there, and the most recent place for each length.
  const int64_t cap = std::min<int64_t>(n_max, len - 1);
  int64_t best_len = 0, best_end = -1;
  for (int64_t e = len - 1; e >= 1; --e) {
    int64_t m = 0;
    while (m < cap && m < e && seq[std::size_t(e - 1 - m)] == seq[std::size_t(len - 1 - m)]) ++m;
    if (m > best_len && m >= n_min) {
      best_len = m;
      best_end = e;
      if (m == cap) break;  // the longest possible, at its most recent place
    }
  }
  if (best_end < 0) return {};
  const int64_t to = std::min<int64_t>(len, best_end + k);
  return {seq.begin() + best_end, seq.begin() + to};
}

int draft_controller::next() noexcept {
  if (k_max_ <= 0) return 0;
  if (pause_ > 0) {
    --pause_;
    return 0;
  }
  return k_;
}

void draft_controller::verified(int drafted, int accepted) noexcept {
  if (drafted <= 0) return;
  if (accepted == 0) {
    k_ = std::max(1, k_ / 2);
    if (++misses_ >= 2) {
      pause_ = pause_next_;
      pause_next_ = std::min(64, pause_next_ * 2);
      misses_ = 0;
    }
    return;
  }
  misses_ = 0;
  pause_next_ = 4;
  if (accepted == drafted) k_ = std::min(k_max_, k_ * 2);
}

}  // namespace qllm::detail
