// Load-time repack of GGUF rows into 8-row panels (layouts in kernel_table.hpp).
#include <cstring>

#include "kernels/kernel_table.hpp"

namespace qllm::kernels {

void repack_q4_0x8(const block_q4_0* src, int64_t n, int64_t nb, block_q4_0x8* dst) noexcept {
  const int64_t np = (n + 7) / 8;
  for (int64_t p = 0; p < np; ++p) {
    for (int64_t b = 0; b < nb; ++b) {
      block_q4_0x8& o = dst[p * nb + b];
      if (p * 8 + 8 > n) std::memset(&o, 0, sizeof o);  // rows past n stay zero
      for (int r = 0; r < 8 && p * 8 + r < n; ++r) {
        const block_q4_0& s = src[(p * 8 + r) * nb + b];
        o.d[r] = s.d;
        // byte j of the GGUF block holds elements j (low) and j+16 (high): chunk j/4, slot j%4
        for (int c = 0; c < 4; ++c) std::memcpy(o.qs + 32 * c + 4 * r, s.qs + 4 * c, 4);
      }
    }
  }
}

void repack_q8_0x8(const block_q8_0* src, int64_t n, int64_t nb, block_q8_0x8* dst) noexcept {
  const int64_t np = (n + 7) / 8;
  for (int64_t p = 0; p < np; ++p) {
    for (int64_t b = 0; b < nb; ++b) {
      block_q8_0x8& o = dst[p * nb + b];
      if (p * 8 + 8 > n) std::memset(&o, 0, sizeof o);
      for (int r = 0; r < 8 && p * 8 + r < n; ++r) {
        const block_q8_0& s = src[(p * 8 + r) * nb + b];
        o.d[r] = s.d;
        for (int c = 0; c < 8; ++c) std::memcpy(o.qs + 32 * c + 4 * r, s.qs + 4 * c, 4);
      }
    }
  }
}

}  // namespace qllm::kernels
