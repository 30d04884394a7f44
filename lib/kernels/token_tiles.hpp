// Splits m tokens into tiles of 4 and a remainder of 1-3, calling tile(std::integral_constant<int,
// TN>, t0) so that each kernel keeps TN accumulators in registers. Internal linkage only.
#pragma once
#include <cstdint>
#include <type_traits>

namespace qllm::kernels {
namespace {

template <class F>
inline void for_token_tiles(int64_t m, F&& tile) {
  int64_t t = 0;
  for (; t + 4 <= m; t += 4) tile(std::integral_constant<int, 4>(), t);
  switch (m - t) {
    case 3: tile(std::integral_constant<int, 3>(), t); break;
    case 2: tile(std::integral_constant<int, 2>(), t); break;
    case 1: tile(std::integral_constant<int, 1>(), t); break;
    default: break;
  }
}

// Calls f(std::integral_constant<int, m>()) for a step of 5 <= m <= 8 tokens and returns true;
// false (nothing called) for other counts.
template <class F>
inline bool for_step_size(int64_t m, F&& f) {
  switch (m) {
    case 5: f(std::integral_constant<int, 5>()); return true;
    case 6: f(std::integral_constant<int, 6>()); return true;
    case 7: f(std::integral_constant<int, 7>()); return true;
    case 8: f(std::integral_constant<int, 8>()); return true;
    default: return false;
  }
}

// A step of 5-8 tokens in one tile (one pass of the weights for all of them, where tiles of 4
// read them twice), other counts as for_token_tiles.
template <class F>
inline void for_step_tiles(int64_t m, F&& tile) {
  if (!for_step_size(m, [&](auto tn) { tile(tn, int64_t(0)); })) for_token_tiles(m, tile);
}

}  // namespace
}  // namespace qllm::kernels
