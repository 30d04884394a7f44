// Load-time repack of GGUF rows into 8-row panels (layouts in kernel_table.hpp).
#include <cstring>
#include <type_traits>

#include "kernels/kernel_table.hpp"
#include "qllm/reference.hpp"

namespace qllm::kernels {

namespace {
// fp16 with all exponent bits set: infinity or NaN
constexpr bool finite16(uint16_t h) { return (h & 0x7c00) != 0x7c00; }
}  // namespace

bool repack_q4_0x8(const block_q4_0* src, int64_t n, int64_t nb, block_q4_0x8* dst) noexcept {
  bool ok = true;
  const int64_t np = (n + 7) / 8;
  for (int64_t p = 0; p < np; ++p) {
    for (int64_t b = 0; b < nb; ++b) {
      block_q4_0x8& o = dst[p * nb + b];
      if (p * 8 + 8 > n) std::memset(&o, 0, sizeof o);  // rows past n stay zero
      for (int r = 0; r < 8 && p * 8 + r < n; ++r) {
        const block_q4_0& s = src[(p * 8 + r) * nb + b];
        ok = ok && finite16(s.d);
        o.d[r] = s.d;
        // byte j of the GGUF block holds elements j (low) and j+16 (high): chunk j/4, slot j%4
        for (int c = 0; c < 4; ++c) std::memcpy(o.qs + 32 * c + 4 * r, s.qs + 4 * c, 4);
      }
    }
  }
  return ok;
}

bool repack_q8_0x8(const block_q8_0* src, int64_t n, int64_t nb, block_q8_0x8* dst) noexcept {
  bool ok = true;
  const int64_t np = (n + 7) / 8;
  for (int64_t p = 0; p < np; ++p) {
    for (int64_t b = 0; b < nb; ++b) {
      block_q8_0x8& o = dst[p * nb + b];
      if (p * 8 + 8 > n) std::memset(&o, 0, sizeof o);
      for (int r = 0; r < 8 && p * 8 + r < n; ++r) {
        const block_q8_0& s = src[(p * 8 + r) * nb + b];
        ok = ok && finite16(s.d);
        o.d[r] = s.d;
        for (int c = 0; c < 8; ++c) std::memcpy(o.qs + 32 * c + 4 * r, s.qs + 4 * c, 4);
      }
    }
  }
  return ok;
}

void interleave_tokens(const block_q8_0* x, const int32_t* xsum, const float* xd, int64_t m, int64_t nb, int64_t b0,
                       int64_t b1, int8_t* q, int32_t* sum, float* d) noexcept {
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = 0; t < m; ++t) {
      const int64_t src = t * nb + b, dst = b * m + t;
      std::memcpy(q + 32 * dst, x[src].qs, 32);
      sum[dst] = xsum[src];
      d[dst] = xd[src];
    }
  }
}

}  // namespace qllm::kernels

// --- k-quants: unpack each GGUF super-block to element order, then lay it out ---

namespace qllm::kernels {
namespace {

// Nibble planes of Q4_Kx8 / Q6_Kx8: pair i chunk c, row r, byte e.
void put_nibbles(uint8_t (*qs)[256], int r, const uint8_t q[256]) {
  for (int i = 0; i < 4; ++i)
    for (int c = 0; c < 8; ++c)
      for (int e = 0; e < 4; ++e)
        qs[i][32 * c + 4 * r + e] =
            uint8_t((q[64 * i + 4 * c + e] & 0x0f) | ((q[64 * i + 32 + 4 * c + e] & 0x0f) << 4));
}

void get_nibbles(const uint8_t (*qs)[256], int r, uint8_t q[256]) {
  for (int i = 0; i < 4; ++i)
    for (int c = 0; c < 8; ++c)
      for (int e = 0; e < 4; ++e) {
        const uint8_t b = qs[i][32 * c + 4 * r + e];
        q[64 * i + 4 * c + e] = b & 0x0f;
        q[64 * i + 32 + 4 * c + e] = b >> 4;
      }
}

template <class Panel>
void put_k4_scales(Panel& o, int r, uint16_t d, uint16_t dmin, const uint8_t sc[8], const uint8_t mn[8]) {
  o.d[r] = d;
  o.dmin[r] = dmin;
  for (int j = 0; j < 8; ++j) {
    o.sc[j / 2][r][j % 2] = sc[j];
    o.mn[j / 2][r][j % 2] = mn[j];
  }
}

template <class Panel>
void get_k4_scales(const Panel& o, int r, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 8; ++j) {
    sc[j] = o.sc[j / 2][r][j % 2];
    mn[j] = o.mn[j / 2][r][j % 2];
  }
}

template <class Block, class Panel, class Put>
bool repack_k(const Block* src, int64_t n, int64_t nb, Panel* dst, Put put) {
  bool ok = true;
  const int64_t np = (n + 7) / 8;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t b = 0; b < nb; ++b) {
      Panel& o = dst[p * nb + b];
      std::memset(&o, 0, sizeof o);  // rows past n stay zero
      for (int r = 0; r < 8 && p * 8 + r < n; ++r) {
        const Block& s = src[(p * 8 + r) * nb + b];
        ok = ok && finite16(s.d);
        if constexpr (!std::is_same_v<Block, block_q6_k>) ok = ok && finite16(s.dmin);
        put(o, r, s);
      }
    }
  return ok;
}

}  // namespace

bool repack_q4_kx8(const block_q4_k* src, int64_t n, int64_t nb, block_q4_kx8* dst) noexcept {
  return repack_k(src, n, nb, dst, [](block_q4_kx8& o, int r, const block_q4_k& s) {
    uint8_t q[256], sc[8], mn[8];
    ref::unpack_q4_k(s, q, sc, mn);
    put_k4_scales(o, r, s.d, s.dmin, sc, mn);
    put_nibbles(o.qs, r, q);
  });
}

bool repack_q5_kx8(const block_q5_k* src, int64_t n, int64_t nb, block_q5_kx8* dst) noexcept {
  return repack_k(src, n, nb, dst, [](block_q5_kx8& o, int r, const block_q5_k& s) {
    uint8_t q[256], sc[8], mn[8];
    ref::unpack_q5_k(s, q, sc, mn);
    put_k4_scales(o, r, s.d, s.dmin, sc, mn);
    put_nibbles(o.qs, r, q);
    for (int c = 0; c < 8; ++c)
      for (int e = 0; e < 4; ++e) {
        uint8_t h = 0;
        for (int j = 0; j < 8; ++j) h = uint8_t(h | ((q[32 * j + 4 * c + e] >> 4) << j));
        o.qh[c][4 * r + e] = h;
      }
  });
}

bool repack_q6_kx8(const block_q6_k* src, int64_t n, int64_t nb, block_q6_kx8* dst) noexcept {
  return repack_k(src, n, nb, dst, [](block_q6_kx8& o, int r, const block_q6_k& s) {
    uint8_t q[256];
    int8_t sc[16];
    ref::unpack_q6_k(s, q, sc);
    o.d[r] = s.d;
    for (int g = 0; g < 16; ++g) o.sc[g / 2][r][g % 2] = sc[g];
    put_nibbles(o.ql, r, q);
    for (int h = 0; h < 2; ++h)
      for (int c = 0; c < 8; ++c)
        for (int e = 0; e < 4; ++e) {
          uint8_t v = 0;
          for (int t = 0; t < 4; ++t) v = uint8_t(v | ((q[32 * (4 * h + t) + 4 * c + e] >> 4) << (2 * t)));
          o.qh[h][32 * c + 4 * r + e] = v;
        }
  });
}

void unpack_panel_row(const block_q4_kx8& p, int r, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept {
  get_k4_scales(p, r, sc, mn);
  get_nibbles(p.qs, r, q);
}

void unpack_panel_row(const block_q5_kx8& p, int r, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept {
  get_k4_scales(p, r, sc, mn);
  get_nibbles(p.qs, r, q);
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 8; ++c)
      for (int e = 0; e < 4; ++e) q[32 * j + 4 * c + e] |= uint8_t(((p.qh[c][4 * r + e] >> j) & 1) << 4);
}

void unpack_panel_row(const block_q6_kx8& p, int r, uint8_t q[256], int8_t sc[16]) noexcept {
  for (int g = 0; g < 16; ++g) sc[g] = p.sc[g / 2][r][g % 2];
  get_nibbles(p.ql, r, q);
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 8; ++c)
      for (int e = 0; e < 4; ++e)
        q[32 * j + 4 * c + e] |= uint8_t(((p.qh[j / 4][32 * c + 4 * r + e] >> (2 * (j % 4))) & 3) << 4);
}

}  // namespace qllm::kernels
