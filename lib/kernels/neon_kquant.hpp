// NEON k-quant kernels over the 8-row super-block panels (kernel_table.hpp), Q8_K activations:
// rows 0-3 and 4-7 in two 128-bit halves, one row per 32-bit lane; exact int32 sums per
// sub-block (dot4 of neon_qgemm.hpp), times the row's scale, then the float epilogue of
// ref::dot_q*_k_q8_k. Internal linkage only.
#pragma once
#include <type_traits>

#include "kernels/neon_qgemm.hpp"

namespace qllm::kernels {
namespace {

// acc + sum over chunks 0..3 of w[c] . broadcast of x's 32-bit group c.
template <bool dotprod>
inline int32x4_t dot_chunks4(int32x4_t acc, const int8x16_t* w, int8x16_t x) {
  acc = dot4<dotprod, 0>(acc, w[0], x);
  acc = dot4<dotprod, 1>(acc, w[1], x);
  acc = dot4<dotprod, 2>(acc, w[2], x);
  return dot4<dotprod, 3>(acc, w[3], x);
}

// p[2r + odd] for r = 0..3, widened to int32.
inline int32x4_t pick4_u8(const uint8_t* p, int odd) {
  const uint16x8_t v = vmovl_u8(vld1_u8(p));
  const uint16x8_t s = odd ? vuzp2q_u16(v, v) : vuzp1q_u16(v, v);
  return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(s)));
}
inline int32x4_t pick4_s8(const int8_t* p, int odd) {
  const int16x8_t v = vmovl_s8(vld1_s8(p));
  const int16x8_t s = odd ? vuzp2q_s16(v, v) : vuzp1q_s16(v, v);
  return vmovl_s16(vget_low_s16(s));
}
// p[2r] * b0 + p[2r+1] * b1 for r = 0..3, p as 8 int16.
inline int32x4_t pair_dot4(int16x8_t v, int b0, int b1) {
  const int16x8_t bb =
      vreinterpretq_s16_u32(vdupq_n_u32(uint32_t(uint16_t(b0)) | (uint32_t(uint16_t(b1)) << 16)));
  return vpaddq_s32(vmull_s16(vget_low_s16(v), vget_low_s16(bb)), vmull_high_s16(v, bb));
}

inline float32x4_t half4(const uint16_t* d) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d))); }

inline void store_panel_k_neon(const kgemm_args& a, int64_t t, int64_t p, float32x4_t lo, float32x4_t hi) {
  const qgemm_args q{nullptr, 0, a.n, nullptr, nullptr, nullptr, 0, a.y, a.ldy};
  store_panel_neon(q, t, p, lo, hi);
}

// Q4_K (bits 4) and Q5_K (bits 5).
template <bool dotprod, int TN, int bits>
void qk45x8_tile_neon(const kgemm_args& a, int64_t p, int64_t t0) {
  using P = std::conditional_t<bits == 4, block_q4_kx8, block_q5_kx8>;
  const P* wp = static_cast<const P*>(a.w) + p * a.nb;
  const uint8x16_t m4 = vdupq_n_u8(0x0f), m10 = vdupq_n_u8(0x10);
  float32x4_t acc[TN][2];
  for (int t = 0; t < TN; ++t) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < a.nb; ++b) {
    const P& wb = wp[b];
    int32x4_t sumi[TN][2];
    for (int t = 0; t < TN; ++t) sumi[t][0] = sumi[t][1] = vdupq_n_s32(0);
    for (int j = 0; j < 8; ++j) {
      const int i = j / 2;
      __builtin_prefetch(reinterpret_cast<const char*>(&wb) + 2 * sizeof(P) + j * (sizeof(P) / 8));
      int8x16_t w[2][8];
      for (int c = 0; c < 8; ++c)
        for (int h = 0; h < 2; ++h) {
          const uint8x16_t raw = vld1q_u8(wb.qs[i] + 32 * c + 16 * h);
          uint8x16_t v = j % 2 ? vshrq_n_u8(raw, 4) : vandq_u8(raw, m4);
          if constexpr (bits == 5) {
            const uint8x16_t qh = vld1q_u8(wb.qh[c] + 16 * h);
            v = vorrq_u8(v, vandq_u8(vshlq_u8(qh, vdupq_n_s8(int8_t(4 - j))), m10));
          }
          w[h][c] = vreinterpretq_s8_u8(v);
        }
      const int32x4_t sc[2] = {pick4_u8(&wb.sc[i][0][0], j % 2), pick4_u8(&wb.sc[i][4][0], j % 2)};
      for (int t = 0; t < TN; ++t) {
        const int8_t* x = a.x[(t0 + t) * a.nb + b].qs + 32 * j;
        const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
        for (int h = 0; h < 2; ++h) {
          const int32x4_t s = dot_chunks4<dotprod>(dot_chunks4<dotprod>(vdupq_n_s32(0), w[h], x0), w[h] + 4, x1);
          sumi[t][h] = vmlaq_s32(sumi[t][h], s, sc[h]);
        }
      }
    }
    const float32x4_t dw[2] = {half4(wb.d), half4(wb.d + 4)};
    const float32x4_t dmw[2] = {half4(wb.dmin), half4(wb.dmin + 4)};
    for (int t = 0; t < TN; ++t) {
      const block_q8_k& xb = a.x[(t0 + t) * a.nb + b];
      for (int h = 0; h < 2; ++h) {
        int32x4_t summ = vdupq_n_s32(0);
        for (int i = 0; i < 4; ++i)
          summ = vaddq_s32(summ, pair_dot4(vreinterpretq_s16_u16(vmovl_u8(vld1_u8(&wb.mn[i][4 * h][0]))),
                                           xb.bsums[4 * i] + xb.bsums[4 * i + 1],
                                           xb.bsums[4 * i + 2] + xb.bsums[4 * i + 3]));
        acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(sumi[t][h]), vmulq_n_f32(dw[h], xb.d));
        acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(vnegq_s32(summ)), vmulq_n_f32(dmw[h], xb.d));
      }
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_k_neon(a, t0 + t, p, acc[t][0], acc[t][1]);
}

template <bool dotprod, int TN>
void q6_kx8_tile_neon(const kgemm_args& a, int64_t p, int64_t t0) {
  const auto* wp = static_cast<const block_q6_kx8*>(a.w) + p * a.nb;
  const uint8x16_t m4 = vdupq_n_u8(0x0f), m30 = vdupq_n_u8(0x30);
  float32x4_t acc[TN][2];
  for (int t = 0; t < TN; ++t) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < a.nb; ++b) {
    const block_q6_kx8& wb = wp[b];
    int32x4_t sumi[TN][2];
    for (int t = 0; t < TN; ++t) sumi[t][0] = sumi[t][1] = vdupq_n_s32(0);
    for (int j = 0; j < 8; ++j) {
      const int i = j / 2, hq = j / 4, s = j % 4;
      __builtin_prefetch(reinterpret_cast<const char*>(&wb) + 2 * sizeof(block_q6_kx8) +
                         j * (sizeof(block_q6_kx8) / 8));
      int8x16_t w[2][8];
      for (int c = 0; c < 8; ++c)
        for (int h = 0; h < 2; ++h) {
          const uint8x16_t raw = vld1q_u8(wb.ql[i] + 32 * c + 16 * h);
          const uint8x16_t qh = vld1q_u8(wb.qh[hq] + 32 * c + 16 * h);
          const uint8x16_t lo = j % 2 ? vshrq_n_u8(raw, 4) : vandq_u8(raw, m4);
          const uint8x16_t hb = vandq_u8(vshlq_u8(qh, vdupq_n_s8(int8_t(4 - 2 * s))), m30);
          w[h][c] = vreinterpretq_s8_u8(vorrq_u8(lo, hb));
        }
      int32x4_t sc[2][2];  // [rows half][group 2j, 2j+1]
      for (int h = 0; h < 2; ++h)
        for (int g = 0; g < 2; ++g) sc[h][g] = pick4_s8(&wb.sc[j][4 * h][0], g);
      for (int t = 0; t < TN; ++t) {
        const int8_t* x = a.x[(t0 + t) * a.nb + b].qs + 32 * j;
        const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
        for (int h = 0; h < 2; ++h) {
          const int32x4_t g0 = dot_chunks4<dotprod>(vdupq_n_s32(0), w[h], x0);
          const int32x4_t g1 = dot_chunks4<dotprod>(vdupq_n_s32(0), w[h] + 4, x1);
          sumi[t][h] = vmlaq_s32(vmlaq_s32(sumi[t][h], g0, sc[h][0]), g1, sc[h][1]);
        }
      }
    }
    const float32x4_t dw[2] = {half4(wb.d), half4(wb.d + 4)};
    for (int t = 0; t < TN; ++t) {
      const block_q8_k& xb = a.x[(t0 + t) * a.nb + b];
      for (int h = 0; h < 2; ++h) {
        int32x4_t sumb = vdupq_n_s32(0);
        for (int j = 0; j < 8; ++j)
          sumb = vaddq_s32(sumb, pair_dot4(vmovl_s8(vld1_s8(&wb.sc[j][4 * h][0])), xb.bsums[2 * j],
                                           xb.bsums[2 * j + 1]));
        const int32x4_t total = vsubq_s32(sumi[t][h], vshlq_n_s32(sumb, 5));
        acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(total), vmulq_n_f32(dw[h], xb.d));
      }
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_k_neon(a, t0 + t, p, acc[t][0], acc[t][1]);
}

template <bool dotprod, int bits>
void gemm_kx8_neon(const kgemm_args& a, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p)
    for_token_tiles(a.m, [&](auto tn, int64_t t) {
      if constexpr (bits == 6)
        q6_kx8_tile_neon<dotprod, decltype(tn)::value>(a, p, t);
      else
        qk45x8_tile_neon<dotprod, decltype(tn)::value, bits>(a, p, t);
    });
}

}  // namespace
}  // namespace qllm::kernels
