// NEON int8 kernels over the 8-row panels (rows 0-3 and 4-7 in two 128-bit halves, one row per
// 32-bit lane): vdotq_laneq_s32 with dotprod, vmull_s8 + pairwise adds without. Per-block float
// epilogue in the canonical order of reference.hpp. Internal linkage only.
#pragma once
#include <arm_neon.h>

#include <cstring>

#include "kernels/kernel_table.hpp"
#include "kernels/token_tiles.hpp"

namespace qllm::kernels {
namespace {

inline void store_panel_neon(const qgemm_args& a, int64_t t, int64_t p, float32x4_t lo,
                             float32x4_t hi) {
  float buf[8];
  vst1q_f32(buf, lo);
  vst1q_f32(buf + 4, hi);
  float* dst = a.y + t * a.ldy + p * 8;
  const int64_t nr = a.n - p * 8 < 8 ? a.n - p * 8 : 8;
  std::memcpy(dst, buf, size_t(nr) * sizeof(float));
}

// acc += w (4 rows x 4 int8) . broadcast of x's 32-bit group `lane`.
template <bool dotprod, int lane>
inline int32x4_t dot4(int32x4_t acc, int8x16_t w, int8x16_t x) {
  if constexpr (dotprod) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_laneq_s32(acc, w, x, lane);
#else
    static_assert(!dotprod, "dotprod kernels need +dotprod");
#endif
  } else {
    const int8x16_t xb = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x), lane));
    const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(xb));
    const int16x8_t hi = vmull_high_s8(w, xb);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));  // |pair| <= 2 * 127 * 127
  }
}

inline float32x4_t epilogue4(float32x4_t acc, int32x4_t si, float32x4_t dw, float dx) {
  return vfmaq_f32(acc, vcvtq_f32_s32(si), vmulq_n_f32(dw, dx));
}

template <bool dotprod, int TN>
void q4_0x8_tile_neon(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* wp = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  float32x4_t acc_lo[TN], acc_hi[TN];
  for (int t = 0; t < TN; ++t) acc_lo[t] = acc_hi[t] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < a.nb; ++b) {
    const block_q4_0x8& wb = wp[b];
    __builtin_prefetch(reinterpret_cast<const char*>(&wb) + 1024);
    int8x16_t wl[4][2], wh[4][2];  // [chunk][rows 0-3 | 4-7]: low nibbles, high nibbles
    for (int c = 0; c < 4; ++c) {
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t raw = vld1q_u8(wb.qs + 32 * c + 16 * h);
        wl[c][h] = vreinterpretq_s8_u8(vandq_u8(raw, m4));
        wh[c][h] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
      }
    }
    const uint16x8_t dh = vld1q_u16(wb.d);
    const float32x4_t dw_lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(dh)));
    const float32x4_t dw_hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(dh)));
    for (int t = 0; t < TN; ++t) {
      const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
      const int8x16_t x0 = vld1q_s8(xb.qs), x1 = vld1q_s8(xb.qs + 16);
      int32x4_t s[2];
      for (int h = 0; h < 2; ++h) {
        int32x4_t v = vdupq_n_s32(0);
        v = dot4<dotprod, 0>(v, wl[0][h], x0);
        v = dot4<dotprod, 1>(v, wl[1][h], x0);
        v = dot4<dotprod, 2>(v, wl[2][h], x0);
        v = dot4<dotprod, 3>(v, wl[3][h], x0);
        v = dot4<dotprod, 0>(v, wh[0][h], x1);
        v = dot4<dotprod, 1>(v, wh[1][h], x1);
        v = dot4<dotprod, 2>(v, wh[2][h], x1);
        v = dot4<dotprod, 3>(v, wh[3][h], x1);
        s[h] = vsubq_s32(v, vdupq_n_s32(8 * a.xsum[(t0 + t) * a.nb + b]));
      }
      const float dx = a.xd[(t0 + t) * a.nb + b];
      acc_lo[t] = epilogue4(acc_lo[t], s[0], dw_lo, dx);
      acc_hi[t] = epilogue4(acc_hi[t], s[1], dw_hi, dx);
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_neon(a, t0 + t, p, acc_lo[t], acc_hi[t]);
}

template <bool dotprod, int TN>
void q8_0x8_tile_neon(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* wp = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  float32x4_t acc_lo[TN], acc_hi[TN];
  for (int t = 0; t < TN; ++t) acc_lo[t] = acc_hi[t] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < a.nb; ++b) {
    const block_q8_0x8& wb = wp[b];
    __builtin_prefetch(reinterpret_cast<const char*>(&wb) + 1024);
    __builtin_prefetch(reinterpret_cast<const char*>(&wb) + 1152);
    const uint16x8_t dh = vld1q_u16(wb.d);
    const float32x4_t dw_lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(dh)));
    const float32x4_t dw_hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(dh)));
    for (int t = 0; t < TN; ++t) {
      const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
      const int8x16_t x0 = vld1q_s8(xb.qs), x1 = vld1q_s8(xb.qs + 16);
      int32x4_t s[2];
      for (int h = 0; h < 2; ++h) {
        const int8_t* q = wb.qs + 16 * h;
        int32x4_t v = vdupq_n_s32(0);
        v = dot4<dotprod, 0>(v, vld1q_s8(q + 0), x0);
        v = dot4<dotprod, 1>(v, vld1q_s8(q + 32), x0);
        v = dot4<dotprod, 2>(v, vld1q_s8(q + 64), x0);
        v = dot4<dotprod, 3>(v, vld1q_s8(q + 96), x0);
        v = dot4<dotprod, 0>(v, vld1q_s8(q + 128), x1);
        v = dot4<dotprod, 1>(v, vld1q_s8(q + 160), x1);
        v = dot4<dotprod, 2>(v, vld1q_s8(q + 192), x1);
        v = dot4<dotprod, 3>(v, vld1q_s8(q + 224), x1);
        s[h] = v;
      }
      const float dx = a.xd[(t0 + t) * a.nb + b];
      acc_lo[t] = epilogue4(acc_lo[t], s[0], dw_lo, dx);
      acc_hi[t] = epilogue4(acc_hi[t], s[1], dw_hi, dx);
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_neon(a, t0 + t, p, acc_lo[t], acc_hi[t]);
}

template <bool dotprod, bool q4>
void gemm_neon(const qgemm_args& a, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    for_token_tiles(a.m, [&](auto tn, int64_t t) {
      if constexpr (q4)
        q4_0x8_tile_neon<dotprod, decltype(tn)::value>(a, p, t);
      else
        q8_0x8_tile_neon<dotprod, decltype(tn)::value>(a, p, t);
    });
  }
}

}  // namespace
}  // namespace qllm::kernels
