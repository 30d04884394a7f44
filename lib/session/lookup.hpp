// Prompt lookup: draft tokens for speculative decoding taken from the sequence itself (answers
// grounded in a prompt copy spans of it), and the controller that sizes the drafts to what the
// stream accepts. Internal to lib/session.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace qllm::detail {

// The tokens that followed the most recent earlier occurrence of the longest suffix of `seq`
// that is n_min..n_max tokens long, at most k of them; empty when no such suffix recurs.
std::vector<int32_t> lookup_draft(std::span<const int32_t> seq, int n_min, int n_max, int k);

// How many tokens to draft next. A pass over 1 + k tokens costs more than one over 1 token (on
// small machines the k extra tokens are compute, not free), so drafts shrink when rejected and
// stop for a while after repeated misses (the pause doubles, up to 64 tokens): a stream that
// never accepts spends at most 2 passes in 66 on drafts.
class draft_controller {
 public:
  // starts at 2 drafts (a pass of 3 costs little more than one of 1) and doubles while all are kept
  explicit draft_controller(int k_max) : k_max_(k_max), k_(std::min(k_max, 2)) {}
  // 0: do not draft for this token (k_max 0, or paused); else the draft size to ask for.
  int next() noexcept;
  void verified(int drafted, int accepted) noexcept;

 private:
  int k_max_, k_;
  int misses_ = 0, pause_ = 0, pause_next_ = 4;
};

}  // namespace qllm::detail
