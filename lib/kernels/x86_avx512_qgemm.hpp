// AVX-512 (BW, optionally VNNI) int8 kernels: two 8-row panels per zmm (16 rows, one per lane).
// Written with SIMDe's simde_mm512_* names: compiled with -mavx512* they are the native
// instructions; compiled with only -mavx2 (the emulated CI build) they are SIMDe's portable
// implementations, so the same source is tested on machines without AVX-512. The float epilogue
// stays in 256-bit registers, per panel, in the canonical order of reference.hpp.
// Internal linkage only: this header is included by the avx512 and avx512_vnni TUs.
#pragma once
#include <simde/x86/avx512.h>

#include "kernels/x86_avx2_qgemm.hpp"

namespace qllm::kernels {
namespace {

inline simde__m512i load_pair(const void* lo, const void* hi) {
  const simde__m256i a = _mm256_loadu_si256(static_cast<const __m256i*>(lo));
  const simde__m256i b = _mm256_loadu_si256(static_cast<const __m256i*>(hi));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(a), b, 1);
}

// Adds one block of 16 rows (si: lanes 0-7 panel p, lanes 8-15 panel p+1) to the accumulators.
inline void epilogue16(simde__m512i si, __m256 dw0, __m256 dw1, float dx, __m256& acc0,
                       __m256& acc1) {
  const __m256 vdx = _mm256_set1_ps(dx);
  const __m256i lo = simde_mm512_castsi512_si256(si);
  const __m256i hi = simde_mm512_extracti64x4_epi64(si, 1);
  acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(dw0, vdx), acc0);
  acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(dw1, vdx), acc1);
}

inline __m256 load_scales(const uint16_t* d) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d)));
}

template <bool vnni, int TN>
void q4_0x16_tile(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* w0 = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const auto* w1 = w0 + a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f);
  const simde__m512i ones = simde_mm512_set1_epi16(1);
  __m256 acc0[TN], acc1[TN];
  for (int t = 0; t < TN; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(w0 + b) + 1024, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1 + b) + 1024, _MM_HINT_T0);
    simde__m512i w[8];
    for (int c = 0; c < 4; ++c) {
      const simde__m512i raw = load_pair(w0[b].qs + 32 * c, w1[b].qs + 32 * c);
      w[c] = simde_mm512_and_si512(raw, m4);
      w[c + 4] = simde_mm512_and_si512(simde_mm512_srli_epi16(raw, 4), m4);
    }
    const __m256 dw0 = load_scales(w0[b].d), dw1 = load_scales(w1[b].d);
    for (int t = 0; t < TN; ++t) {
      const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
      simde__m512i si;
      if constexpr (vnni) {
        // four independent chains: vpdpbusd has a latency of several cycles
        simde__m512i s4[4];
        for (int j = 0; j < 4; ++j)
          s4[j] = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), w[j],
                                           simde_mm512_set1_epi32(load_i32(xb.qs + 4 * j)));
        for (int j = 4; j < 8; ++j)
          s4[j - 4] = simde_mm512_dpbusd_epi32(s4[j - 4], w[j],
                                               simde_mm512_set1_epi32(load_i32(xb.qs + 4 * j)));
        si = simde_mm512_add_epi32(simde_mm512_add_epi32(s4[0], s4[1]),
                                   simde_mm512_add_epi32(s4[2], s4[3]));
      } else {
        simde__m512i s = simde_mm512_maddubs_epi16(w[0], simde_mm512_set1_epi32(load_i32(xb.qs)));
        for (int j = 1; j < 8; ++j)
          s = simde_mm512_add_epi16(
              s, simde_mm512_maddubs_epi16(w[j], simde_mm512_set1_epi32(load_i32(xb.qs + 4 * j))));
        si = simde_mm512_madd_epi16(s, ones);
      }
      si = simde_mm512_sub_epi32(si, simde_mm512_set1_epi32(8 * a.xsum[(t0 + t) * a.nb + b]));
      epilogue16(si, dw0, dw1, fp16_scalar(xb.d), acc0[t], acc1[t]);
    }
  }
  for (int t = 0; t < TN; ++t) {
    store_panel(a, t0 + t, p, acc0[t]);
    store_panel(a, t0 + t, p + 1, acc1[t]);
  }
}

template <bool vnni, int TN>
void q8_0x16_tile(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* w0 = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  const auto* w1 = w0 + a.nb;
  const simde__m512i ones = simde_mm512_set1_epi16(1);
  const simde__m512i zero = simde_mm512_setzero_si512();
  __m256 acc0[TN], acc1[TN];
  for (int t = 0; t < TN; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    for (int o = 1024; o < 1024 + 272; o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w0 + b) + o, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w1 + b) + o, _MM_HINT_T0);
    }
    simde__m512i si[TN][2];  // two chains per token (even / odd chunks)
    for (int t = 0; t < TN; ++t) si[t][0] = si[t][1] = zero;
    for (int j = 0; j < 8; ++j) {
      const simde__m512i wv = load_pair(w0[b].qs + 32 * j, w1[b].qs + 32 * j);
      const simde__m512i wabs = simde_mm512_abs_epi8(wv);
      const simde__mmask64 neg = simde_mm512_movepi8_mask(wv);
      for (int t = 0; t < TN; ++t) {
        const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
        const simde__m512i xv = simde_mm512_set1_epi32(load_i32(xb.qs + 4 * j));
        const simde__m512i xs = simde_mm512_mask_sub_epi8(xv, neg, zero, xv);  // x * sign(w)
        simde__m512i& acc = si[t][j & 1];
        if constexpr (vnni)
          acc = simde_mm512_dpbusd_epi32(acc, wabs, xs);
        else
          acc = simde_mm512_add_epi32(
              acc, simde_mm512_madd_epi16(simde_mm512_maddubs_epi16(wabs, xs), ones));
      }
    }
    const __m256 dw0 = load_scales(w0[b].d), dw1 = load_scales(w1[b].d);
    for (int t = 0; t < TN; ++t)
      epilogue16(simde_mm512_add_epi32(si[t][0], si[t][1]), dw0, dw1, fp16_scalar(a.x[(t0 + t) * a.nb + b].d), acc0[t], acc1[t]);
  }
  for (int t = 0; t < TN; ++t) {
    store_panel(a, t0 + t, p, acc0[t]);
    store_panel(a, t0 + t, p + 1, acc1[t]);
  }
}

// The 256-bit tiles' dot primitive with vpdpbusd (AVX512-VL + VNNI): the decoding GEMV of VNNI
// machines, one panel and one weight stream per thread. Four chains hide vpdpbusd's latency.
struct dot_vnni256 {
  static __m256i q4(const __m256i w[8], const int8_t* x) {
    __m256i s4[4];
    for (int j = 0; j < 4; ++j)
      s4[j] = simde_mm256_dpbusd_epi32(_mm256_setzero_si256(), w[j], _mm256_set1_epi32(load_i32(x + 4 * j)));
    for (int j = 4; j < 8; ++j)
      s4[j - 4] = simde_mm256_dpbusd_epi32(s4[j - 4], w[j], _mm256_set1_epi32(load_i32(x + 4 * j)));
    return _mm256_add_epi32(_mm256_add_epi32(s4[0], s4[1]), _mm256_add_epi32(s4[2], s4[3]));
  }
  static __m256i q8_step(__m256i acc, __m256i wabs, __m256i xs) {
    return simde_mm256_dpbusd_epi32(acc, wabs, xs);
  }
};

// Panels in pairs; an odd last panel goes through a 256-bit kernel. Fewer than 4 tokens (the
// memory-bound GEMV of decoding) also take a 256-bit kernel: one weight stream per thread
// measured about 2x faster than two on Zen 4 (docs/kernels.md). Same canonical order either way.
template <bool vnni, bool q4>
void gemm_x16(const qgemm_args& a, int64_t p0, int64_t p1) {
  int64_t p = a.m < 4 ? p1 : p0;
  for (; p + 2 <= p1; p += 2) {
    for_token_tiles(a.m, [&](auto tn, int64_t t) {
      if constexpr (q4)
        q4_0x16_tile<vnni, decltype(tn)::value>(a, p, t);
      else
        q8_0x16_tile<vnni, decltype(tn)::value>(a, p, t);
    });
  }
  const int64_t rest = a.m < 4 ? p0 : p;
  const int ahead = q_prefetch_bytes();
  for (int64_t r = rest; r < p1; ++r) {
    for_token_tiles(a.m, [&](auto tn, int64_t t) {
      constexpr int TN = decltype(tn)::value;
      using Dot = std::conditional_t<vnni, dot_vnni256, dot_maddubs>;
      if constexpr (q4)
        q4_0x8_tile<TN, Dot>(a, r, t, ahead);
      else
        q8_0x8_tile<TN, Dot>(a, r, t, ahead);
    });
  }
}

}  // namespace
}  // namespace qllm::kernels
