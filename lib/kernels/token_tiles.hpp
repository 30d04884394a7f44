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

// A step of 5-8 tokens in one tile (one pass of the weights for all of them, where tiles of 4
// read them twice), other counts as for_token_tiles.
template <class F>
inline void for_step_tiles(int64_t m, F&& tile) {
  switch (m) {
    case 5: tile(std::integral_constant<int, 5>(), 0); break;
    case 6: tile(std::integral_constant<int, 6>(), 0); break;
    case 7: tile(std::integral_constant<int, 7>(), 0); break;
    case 8: tile(std::integral_constant<int, 8>(), 0); break;
    default: for_token_tiles(m, tile); break;
  }
}

}  // namespace
}  // namespace qllm::kernels
