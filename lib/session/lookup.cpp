#include "session/lookup.hpp"

#include <algorithm>

namespace qllm::detail {

std::vector<int32_t> lookup_draft(std::span<const int32_t> seq, int n_min, int n_max, int k) {
  const int64_t len = int64_t(seq.size());
  if (k <= 0 || n_min <= 0) return {};
  for (int n = std::min<int64_t>(n_max, len - 1); n >= n_min; --n) {
    const auto suffix = seq.subspan(std::size_t(len - n));
    // the most recent earlier occurrence (its end before the suffix's end), followed by at least
    // one token
    for (int64_t start = len - n - 1; start >= 0; --start) {
      if (!std::equal(suffix.begin(), suffix.end(), seq.begin() + start)) continue;
      const int64_t from = start + n, to = std::min<int64_t>(len, from + k);
      if (from >= len) continue;
      return {seq.begin() + from, seq.begin() + to};
    }
  }
  return {};
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
