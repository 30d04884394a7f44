// AVX2 int8 kernels over the 8-row panels: the int8 dot primitive (maddubs + madd) that xsimd
// 8.1 lacks, with its per-block float epilogue. Each 32-bit lane is one row; blocks accumulate
// as acc = fma(float(sumi), d_w * d_x, acc), the canonical order of reference.hpp.
// Included by the AVX2 and AVX-512 translation units; internal linkage only.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/kernel_table.hpp"
#include "kernels/token_tiles.hpp"
#include "qllm/reference.hpp"

namespace qllm::kernels {
namespace {

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Writes 8 row results of panel p for token t, clipping rows >= n.
inline void store_panel(const qgemm_args& a, int64_t t, int64_t p, __m256 v) {
  float* dst = a.y + t * a.ldy + p * 8;
  if (p * 8 + 8 <= a.n) {
    _mm256_storeu_ps(dst, v);
  } else {
    alignas(32) float buf[8];
    _mm256_store_ps(buf, v);
    for (int64_t r = 0; r < a.n - p * 8; ++r) dst[r] = buf[r];
  }
}

// Software prefetch of every cache line of the panel stream `ahead` bytes ahead
// (q_prefetch_bytes: one panel is one sequential stream), into L2, once per 4 blocks (9 lines of
// Q4_0, 17 of Q8_0: each line once). Touching one line per block (144 or 272 bytes) left most
// lines to the hardware prefetcher (one-thread Q4_0 GEMV 10.6 GB/s where Q4_K, prefetching every
// line, read 13.2). The distance sets how many lines are in flight: on the 2-core Sapphire
// Rapids VM, 7B Q4_0 tg32 (QLLM_ISA=avx2, alternating runs) went 2.39 -> 2.85 tok/s on one
// thread and 4.2-4.5 -> 5.2 on two from 2 KiB into L1 to 8 KiB into L2. On a Zen 3, look-ahead
// prefetch (1 and 4 KiB) measured a third slower than none, and on a Zen 4 none beat 8 KiB by
// 39 % (Q8_0, 1 thread) and 25 % (Q4_0, 2 threads; 7B tg, medians of alternating pairs, level in
// the other two cases): 0 on AMD before Zen 5. With `ahead` 0 the lines of
// the current 4 blocks are touched.
//
// Unconditional: gcc 12 dropped the prefetches of a conditional block altogether (checked in the
// object code: no prefetcht1 left).
template <class Block>
inline void prefetch_group(const Block* b, int ahead) {
  constexpr int lines = 4 * int(sizeof(Block)) / 64;
  static_assert(4 * sizeof(Block) % 64 == 0);
  const char* base = reinterpret_cast<const char*>(b) + ahead;
  for (int l = 0; l < lines; ++l) _mm_prefetch(base + 64 * l, _MM_HINT_T1);
}

// Calls block(b) for b < nb, prefetching once per 4 blocks.
template <class Block, class F>
inline void for_blocks(const Block* wp, int64_t nb, int ahead, F&& block) {
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    prefetch_group(wp + b, ahead);
    for (int i = 0; i < 4; ++i) block(b + i);
  }
  for (; b < nb; ++b) block(b);
}

// The int8 dot primitive of the 256-bit tiles. w: unsigned (Q4 nibbles, or |w| for Q8_0);
// x: signed activation quants. Every variant returns exact int32 sums per row lane.
struct dot_maddubs {
  // Q4_0 block: w[j] holds quants 4j..4j+3 of each row; |sum| <= 8 * 2 * 15 * 128 fits int16
  static __m256i q4(const __m256i w[8], const int8_t* x) {
    __m256i s = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(load_i32(x)));
    for (int j = 1; j < 8; ++j)
      s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[j], _mm256_set1_epi32(load_i32(x + 4 * j))));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
  }
  static __m256i q8_step(__m256i acc, __m256i wabs, __m256i xs) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xs), _mm256_set1_epi16(1)));
  }
};

// Q4_0 panels x Q8_0 activations, TN tokens at a time; `ahead`: q_prefetch_bytes() (fewer than
// 4 tokens) or step_prefetch_bytes(), read once per matrix call by the caller.
template <int TN, class Dot>
void q4_0x8_tile(const qgemm_args& a, int64_t p, int64_t t0, int ahead) {
  const auto* wp = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  for_blocks(wp, a.nb, ahead, [&](int64_t b) {
    const block_q4_0x8& wb = wp[b];
    __m256i si[TN];
    if constexpr (TN >= 3 && std::is_same_v<Dot, dot_maddubs>) {
      // The same exact sums chunk by chunk in a loop: unrolled, gcc spills the tile's sums.
      // |int16 sum| <= 8 * 2 * 15 * 128 in any order.
      __m256i s16[TN];
      for (int t = 0; t < TN; ++t) s16[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * c));
        const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        for (int t = 0; t < TN; ++t) {
          const int8_t* x = a.x[(t0 + t) * a.nb + b].qs;
          s16[t] = _mm256_add_epi16(s16[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(x + 4 * c))),
                                                             _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(x + 16 + 4 * c)))));
        }
      }
      for (int t = 0; t < TN; ++t) si[t] = _mm256_madd_epi16(s16[t], _mm256_set1_epi16(1));
    } else {
      __m256i w[8];  // w[j]: elements 4j..4j+3 of each row
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * c));
        w[c] = _mm256_and_si256(raw, m4);
        w[c + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      }
      for (int t = 0; t < TN; ++t) si[t] = Dot::q4(w, a.x[(t0 + t) * a.nb + b].qs);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    for (int t = 0; t < TN; ++t) {
      const int64_t xi = (t0 + t) * a.nb + b;
      const __m256i s = _mm256_sub_epi32(si[t], _mm256_set1_epi32(8 * a.xsum[xi]));
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a.xd[xi]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
    }
  });
  for (int t = 0; t < TN; ++t) store_panel(a, t0 + t, p, acc[t]);
}

// Q8_0 panels: dot(|w|, sign(x, w)) is exact for every int8 w (x is never -128).
template <int TN, class Dot>
void q8_0x8_tile(const qgemm_args& a, int64_t p, int64_t t0, int ahead) {
  const auto* wp = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  for_blocks(wp, a.nb, ahead, [&](int64_t b) {
    const block_q8_0x8& wb = wp[b];
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    __m256i si[TN];
    for (int t = 0; t < TN; ++t) si[t] = _mm256_setzero_si256();
    const auto chunk = [&](int j) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * j));
      const __m256i wabs = _mm256_abs_epi8(wv);
      for (int t = 0; t < TN; ++t) {
        const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
        const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(load_i32(xb.qs + 4 * j)), wv);
        si[t] = Dot::q8_step(si[t], wabs, xs);
      }
    };
    if constexpr (TN >= 3) {
      // a loop, not unrolled: unrolled, gcc hoists the 8 x TN broadcasts and spills the sums
      // (measured 103-111 GOP/s against 124-125 as a loop, 11008x4096 M = 512, one thread)
#pragma GCC unroll 1
      for (int j = 0; j < 8; ++j) chunk(j);
    } else {
      for (int j = 0; j < 8; ++j) chunk(j);
    }
    for (int t = 0; t < TN; ++t) {
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a.xd[(t0 + t) * a.nb + b]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[t]), d, acc[t]);
    }
  });
  for (int t = 0; t < TN; ++t) store_panel(a, t0 + t, p, acc[t]);
}

// A step of 5-8 decoding streams from the token-interleaved copy (qgemm_args::xt_q): one pass
// of each panel for all tokens, where tiles of 4 stream it from memory in the first and read it
// again from L1 in the second. One pointer and constant offsets reach every token; the float
// accumulators live in an L1 buffer. Same exact sums and float epilogue as the tiles above.
template <int TN>
void q4_0x8_tile_il(const qgemm_args& a, int64_t p, int ahead) {
  const auto* wp = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  alignas(32) float acc[TN][8];
  for (int t = 0; t < TN; ++t) _mm256_store_ps(acc[t], _mm256_setzero_ps());
  for_blocks(wp, a.nb, ahead, [&](int64_t b) {
    const block_q4_0x8& wb = wp[b];
    const int8_t* xq = a.xt_q + 32 * TN * b;
    __m256i s16[TN];  // |int16 sum| <= 8 * 2 * 15 * 128 in any order
    for (int t = 0; t < TN; ++t) s16[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      for (int t = 0; t < TN; ++t)
        s16[t] = _mm256_add_epi16(s16[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(xq + 32 * t + 4 * c))),
                                                           _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(xq + 32 * t + 16 + 4 * c)))));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    const int32_t* xsum = a.xt_sum + TN * b;
    const float* xd = a.xt_d + TN * b;
    for (int t = 0; t < TN; ++t) {
      const __m256i si = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], _mm256_set1_epi16(1)), _mm256_set1_epi32(8 * xsum[t]));
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(xd[t]));
      _mm256_store_ps(acc[t], _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), d, _mm256_load_ps(acc[t])));
    }
  });
  for (int t = 0; t < TN; ++t) store_panel(a, t, p, _mm256_load_ps(acc[t]));
}

template <int TN>
void q8_0x8_tile_il(const qgemm_args& a, int64_t p, int ahead) {
  const auto* wp = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  alignas(32) float acc[TN][8];
  for (int t = 0; t < TN; ++t) _mm256_store_ps(acc[t], _mm256_setzero_ps());
  for_blocks(wp, a.nb, ahead, [&](int64_t b) {
    const block_q8_0x8& wb = wp[b];
    const int8_t* xq = a.xt_q + 32 * TN * b;
    __m256i si[TN];
    for (int t = 0; t < TN; ++t) si[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int j = 0; j < 8; ++j) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * j));
      const __m256i wabs = _mm256_abs_epi8(wv);
      for (int t = 0; t < TN; ++t)
        si[t] = dot_maddubs::q8_step(si[t], wabs, _mm256_sign_epi8(_mm256_set1_epi32(load_i32(xq + 32 * t + 4 * j)), wv));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    const float* xd = a.xt_d + TN * b;
    for (int t = 0; t < TN; ++t) {
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(xd[t]));
      _mm256_store_ps(acc[t], _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[t]), d, _mm256_load_ps(acc[t])));
    }
  });
  for (int t = 0; t < TN; ++t) store_panel(a, t, p, _mm256_load_ps(acc[t]));
}

// Calls tile(std::integral_constant<int, m>()) for 5 <= m <= 8 when the interleaved copy is
// there; false (nothing called) otherwise.
template <class F>
inline bool for_interleaved_step(const qgemm_args& a, F&& tile) {
  static_assert(kmax_interleaved == 8);
  return a.xt_q && for_step_size(a.m, tile);
}

inline void gemm_q4_0x8_avx2(const qgemm_args& a, int64_t p0, int64_t p1) {
  const int ahead = a.m >= 4 ? step_prefetch_bytes() : q_prefetch_bytes();
  if (for_interleaved_step(a, [&](auto tn) {
        for (int64_t p = p0; p < p1; ++p) q4_0x8_tile_il<decltype(tn)::value>(a, p, ahead);
      }))
    return;
  for (int64_t p = p0; p < p1; ++p)
    for_token_tiles(a.m, [&](auto tn, int64_t t) { q4_0x8_tile<decltype(tn)::value, dot_maddubs>(a, p, t, ahead); });
}

inline void gemm_q8_0x8_avx2(const qgemm_args& a, int64_t p0, int64_t p1) {
  const int ahead = a.m >= 4 ? step_prefetch_bytes() : q_prefetch_bytes();
  if (for_interleaved_step(a, [&](auto tn) {
        for (int64_t p = p0; p < p1; ++p) q8_0x8_tile_il<decltype(tn)::value>(a, p, ahead);
      }))
    return;
  for (int64_t p = p0; p < p1; ++p)
    for_token_tiles(a.m, [&](auto tn, int64_t t) { q8_0x8_tile<decltype(tn)::value, dot_maddubs>(a, p, t, ahead); });
}

// The scale of a block of activations and its inverse as the references compute them: d = amax /
// 127 (amax: the lanes' maximum), id = 1 / d, 0 where d is 0 or 1 / d overflows (a denormal d:
// all quants 0).
inline float q8_scale_avx2(__m256 amax, float& id) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float d = _mm_cvtss_f32(m) / 127.0f;
  id = d != 0.0f ? 1.0f / d : 0.0f;
  if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;
  return d;
}
// 32 quants as int16 (packs_epi32 of int32 quants 0-7, 8-15 and 16-23, 24-31: lanes interleaved
// per 128 bits) to 32 int8 in order.
inline __m256i pack_q8_avx2(__m256i p16a, __m256i p16b) {
  return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Q8_0 quantization of activations: nearest-even rounding, as ref::quantize_row_q8_0.
inline void quantize_row_q8_0_avx2(const float* x, block_q8_0* y, int32_t* sums, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 fmax = _mm256_set1_ps(3.40282347e38f);
  for (int64_t b = 0; b < k / qk; ++b, x += qk) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    __m256 bad = _mm256_setzero_ps();  // lanes that are NaN or infinite (not |v| <= FLT_MAX)
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      const __m256 a = _mm256_andnot_ps(sign, v[i]);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
      amax = _mm256_max_ps(amax, a);
    }
    if (_mm256_movemask_ps(bad)) {  // as ref::quantize_row_q8_0
      y[b].d = ref::fp16_nan_q8;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), _mm256_setzero_si256());
      if (sums) sums[b] = 0;
      continue;
    }
    float id;
    const float d = q8_scale_avx2(amax, id);
    y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], vid),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (sums) {
      __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      s4 = _mm_hadd_epi32(s4, s4);
      sums[b] = _mm_cvtsi128_si32(s4);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs),
                        pack_q8_avx2(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])));
  }
}

// Q8_K quantization of activations (256 a block, and the sums of each 16), as
// ref::quantize_row_q8_k: the same amax, scale and nearest-even rounding, so the same bytes.
inline void quantize_row_q8_k_avx2(const float* x, block_q8_k* y, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 fmax = _mm256_set1_ps(3.40282347e38f);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    __m256 amax = _mm256_setzero_ps();
    __m256 bad = _mm256_setzero_ps();  // lanes that are NaN or infinite
    for (int i = 0; i < qk_k / 8; ++i) {
      const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * i));
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
      amax = _mm256_max_ps(amax, a);
    }
    if (_mm256_movemask_ps(bad)) {  // as ref::quantize_row_q8_k
      y[b].d = std::numeric_limits<float>::quiet_NaN();
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      std::memset(y[b].bsums, 0, sizeof y[b].bsums);
      continue;
    }
    float id;
    const float d = q8_scale_avx2(amax, id);
    y[b].d = d;
    const __m256 vid = _mm256_set1_ps(id);
    for (int c = 0; c < qk_k / 32; ++c) {  // 32 quants: two sums of 16
      __m256i q[4];
      for (int i = 0; i < 4; ++i)
        q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * c + 8 * i), vid),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);  // quants 0-15 (lanes interleaved)
      const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);  // quants 16-31
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + 32 * c), pack_q8_avx2(p16a, p16b));
      // [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7], then twice more
      __m256i h = _mm256_hadd_epi32(_mm256_madd_epi16(p16a, ones), _mm256_madd_epi16(p16b, ones));
      h = _mm256_hadd_epi32(h, h);
      const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
      y[b].bsums[2 * c] = int16_t(_mm_cvtsi128_si32(s));
      y[b].bsums[2 * c + 1] = int16_t(_mm_extract_epi32(s, 1));
    }
  }
}

inline void cvt_f16_avx2(const uint16_t* src, float* dst) {
  _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
}

}  // namespace
}  // namespace qllm::kernels
