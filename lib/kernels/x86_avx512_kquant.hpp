// AVX-512 (BW, optionally VNNI) k-quant kernels: two 8-row super-block panels per zmm (16 rows,
// one per 32-bit lane) for prompts; decoding (fewer than 4 tokens) and an odd last panel take the
// AVX2 kernels, as the Q4_0/Q8_0 tables do (docs/kernels.md). Per sub-block the int32 sum of a
// row is exact on both paths: maddubs into bounded int16 sums then madd by the (scale, scale)
// pair, or vpdpbusd into int32 then vpmulld by the scale. The float epilogue is the AVX2
// kernels', per panel in 256-bit registers. Written with SIMDe names (x86_avx512_qgemm.hpp says
// why). Internal linkage only: included by the avx512 and avx512_vnni TUs.
#pragma once
#include "kernels/x86_avx2_kquant.hpp"
#include "kernels/x86_avx512_qgemm.hpp"

namespace qllm::kernels {
namespace {

// Two 16-byte groups (one per panel) widened to int16: lanes 0-7 panel p, 8-15 panel p+1.
inline simde__m512i widen_u8_pair(const uint8_t* lo, const uint8_t* hi) {
  const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
  const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(a), b, 1);
}
inline simde__m512i widen_s8_pair(const int8_t* lo, const int8_t* hi) {
  const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(a), b, 1);
}
// From 32-bit lanes holding int16 pairs (a, b): (a, a) or (b, b) for madd (bit patterns), a or b
// sign-extended to int32 for vpmulld (madd with (1, 0) or (0, 1): exact for the signed Q6_K
// scales too).
inline simde__m512i dup16(simde__m512i v, bool odd) {
  const simde__m512i lo = simde_mm512_set1_epi32(0x0000ffff);
  return odd ? simde_mm512_or_si512(simde_mm512_srli_epi32(v, 16), simde_mm512_andnot_si512(lo, v))
             : simde_mm512_or_si512(simde_mm512_and_si512(v, lo), simde_mm512_slli_epi32(v, 16));
}
inline simde__m512i half32(simde__m512i v, bool odd) {
  return simde_mm512_madd_epi16(v, simde_mm512_set1_epi32(odd ? 0x00010000 : 0x00000001));
}
inline simde__m512i bcast4_512(const int8_t* x) { return simde_mm512_set1_epi32(load_i32(x)); }

// acc0/acc1 += float(v's panel halves) * (d0/d1 * dx)
inline void epilogue16k(simde__m512i v, __m256 d0, __m256 d1, __m256 dx, __m256& acc0, __m256& acc1) {
  acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(simde_mm512_castsi512_si256(v)), _mm256_mul_ps(d0, dx), acc0);
  acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(simde_mm512_extracti64x4_epi64(v, 1)), _mm256_mul_ps(d1, dx), acc1);
}

template <class P>
inline void prefetch_pair(const P* w0, const P* w1, int j) {
  constexpr int lines = int(sizeof(P) / 8 / 64) + 1;
  for (int l = 0; l < lines; ++l) {
    _mm_prefetch(reinterpret_cast<const char*>(w0 + 2) + j * (sizeof(P) / 8) + 64 * l, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1 + 2) + j * (sizeof(P) / 8) + 64 * l, _MM_HINT_T0);
  }
}

// Sum over the 8 chunks of one sub-block, times the row scales: exact int32 per lane.
template <bool vnni, int bits>
inline simde__m512i scaled_dot(const simde__m512i w[8], const int8_t* x, simde__m512i sc) {
  if constexpr (vnni) {
    simde__m512i s0 = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), w[0], bcast4_512(x));
    simde__m512i s1 = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), w[1], bcast4_512(x + 4));
    for (int c = 2; c < 8; c += 2) {
      s0 = simde_mm512_dpbusd_epi32(s0, w[c], bcast4_512(x + 4 * c));
      s1 = simde_mm512_dpbusd_epi32(s1, w[c + 1], bcast4_512(x + 4 * c + 4));
    }
    return simde_mm512_mullo_epi32(simde_mm512_add_epi32(s0, s1), sc);
  } else if constexpr (bits == 4) {  // |pair| <= 2 * 15 * 127, 8 pairs summed fit int16
    simde__m512i s = simde_mm512_maddubs_epi16(w[0], bcast4_512(x));
    for (int c = 1; c < 8; ++c) s = simde_mm512_add_epi16(s, simde_mm512_maddubs_epi16(w[c], bcast4_512(x + 4 * c)));
    return simde_mm512_madd_epi16(s, sc);
  } else {  // |pair| <= 2 * 31 * 127: sums of 4
    simde__m512i s0 = simde_mm512_maddubs_epi16(w[0], bcast4_512(x));
    simde__m512i s1 = simde_mm512_maddubs_epi16(w[4], bcast4_512(x + 16));
    for (int c = 1; c < 4; ++c) {
      s0 = simde_mm512_add_epi16(s0, simde_mm512_maddubs_epi16(w[c], bcast4_512(x + 4 * c)));
      s1 = simde_mm512_add_epi16(s1, simde_mm512_maddubs_epi16(w[c + 4], bcast4_512(x + 16 + 4 * c)));
    }
    return simde_mm512_add_epi32(simde_mm512_madd_epi16(s0, sc), simde_mm512_madd_epi16(s1, sc));
  }
}

template <bool vnni, int TN, int bits>
void qk45x16_tile(const kgemm_args& a, int64_t p, int64_t t0) {
  using P = std::conditional_t<bits == 4, block_q4_kx8, block_q5_kx8>;
  const P* w0 = static_cast<const P*>(a.w) + p * a.nb;
  const P* w1 = w0 + a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f), m10 = simde_mm512_set1_epi8(0x10);
  __m256 acc0[TN], acc1[TN];
  for (int t = 0; t < TN; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    simde__m512i sumi[TN];
    for (int t = 0; t < TN; ++t) sumi[t] = simde_mm512_setzero_si512();
    alignas(32) int32_t xpairs[TN][8];
    for (int t = 0; t < TN; ++t) store_subblock_pairs(a.x[(t0 + t) * a.nb + b], xpairs[t]);
    for (int j = 0; j < 8; ++j) {
      prefetch_pair(w0 + b, w1 + b, j);
      const int i = j / 2;
      const bool odd = j % 2;
      const simde__m512i scv = widen_u8_pair(&w0[b].sc[i][0][0], &w1[b].sc[i][0][0]);
      const simde__m512i sc = vnni ? half32(scv, odd) : dup16(scv, odd);
      simde__m512i w[8];
      for (int c = 0; c < 8; ++c) {
        const simde__m512i raw = load_pair(w0[b].qs[i] + 32 * c, w1[b].qs[i] + 32 * c);
        w[c] = simde_mm512_and_si512(odd ? simde_mm512_srli_epi16(raw, 4) : raw, m4);
        if constexpr (bits == 5) {
          const simde__m512i qh = load_pair(w0[b].qh[c], w1[b].qh[c]);
          const simde__m512i hb = j < 4 ? simde_mm512_slli_epi16(qh, unsigned(4 - j))
                                        : simde_mm512_srli_epi16(qh, unsigned(j - 4));
          w[c] = simde_mm512_or_si512(w[c], simde_mm512_and_si512(hb, m10));
        }
      }
      for (int t = 0; t < TN; ++t)
        sumi[t] = simde_mm512_add_epi32(sumi[t], scaled_dot<vnni, bits>(w, a.x[(t0 + t) * a.nb + b].qs + 32 * j, sc));
    }
    const __m256 dw0 = load_scales8(w0[b].d), dw1 = load_scales8(w1[b].d);
    const __m256 dm0 = load_scales8(w0[b].dmin), dm1 = load_scales8(w1[b].dmin);
    simde__m512i mnv[4];  // the rows' (min, min') pairs of sub-blocks 2i, 2i+1
    for (int i = 0; i < 4; ++i) mnv[i] = widen_u8_pair(&w0[b].mn[i][0][0], &w1[b].mn[i][0][0]);
    for (int t = 0; t < TN; ++t) {
      const block_q8_k& xb = a.x[(t0 + t) * a.nb + b];
      simde__m512i summ = simde_mm512_setzero_si512();
      for (int i = 0; i < 4; ++i)
        summ = simde_mm512_add_epi32(summ,
                                     simde_mm512_madd_epi16(mnv[i], simde_mm512_set1_epi32(xpairs[t][xpair_word(i)])));
      const __m256 dx = _mm256_set1_ps(xb.d);
      epilogue16k(sumi[t], dw0, dw1, dx, acc0[t], acc1[t]);
      epilogue16k(simde_mm512_sub_epi32(simde_mm512_setzero_si512(), summ), dm0, dm1, dx, acc0[t], acc1[t]);
    }
  }
  for (int t = 0; t < TN; ++t) {
    store_panel_k(a, t0 + t, p, acc0[t]);
    store_panel_k(a, t0 + t, p + 1, acc1[t]);
  }
}

template <bool vnni, int TN>
void q6_kx16_tile(const kgemm_args& a, int64_t p, int64_t t0) {
  const auto* w0 = static_cast<const block_q6_kx8*>(a.w) + p * a.nb;
  const auto* w1 = w0 + a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f), m30 = simde_mm512_set1_epi8(0x30);
  __m256 acc0[TN], acc1[TN];
  for (int t = 0; t < TN; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    simde__m512i sumi[TN];
    for (int t = 0; t < TN; ++t) sumi[t] = simde_mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      prefetch_pair(w0 + b, w1 + b, j);
      const int i = j / 2, h = j / 4, s = j % 4;
      const bool odd = j % 2;
      const simde__m512i scv = widen_s8_pair(&w0[b].sc[j][0][0], &w1[b].sc[j][0][0]);
      const simde__m512i sc0 = vnni ? half32(scv, false) : dup16(scv, false);
      const simde__m512i sc1 = vnni ? half32(scv, true) : dup16(scv, true);
      const simde__m512i sc32 = simde_mm512_slli_epi16(scv, 5);  // the -32 offset: 32 (s, s') pairs
      simde__m512i w[8];
      for (int c = 0; c < 8; ++c) {
        const simde__m512i raw = load_pair(w0[b].ql[i] + 32 * c, w1[b].ql[i] + 32 * c);
        const simde__m512i qh = load_pair(w0[b].qh[h] + 32 * c, w1[b].qh[h] + 32 * c);
        // bits 2s..2s+1 of each byte to bits 4..5
        const simde__m512i hb = s < 2 ? simde_mm512_slli_epi16(qh, unsigned(4 - 2 * s))
                                      : simde_mm512_srli_epi16(qh, unsigned(2 * s - 4));
        w[c] = simde_mm512_or_si512(simde_mm512_and_si512(odd ? simde_mm512_srli_epi16(raw, 4) : raw, m4),
                                    simde_mm512_and_si512(hb, m30));
      }
      for (int t = 0; t < TN; ++t) {
        const int8_t* x = a.x[(t0 + t) * a.nb + b].qs + 32 * j;
        simde__m512i g[2];  // groups 2j (chunks 0-3) and 2j+1 (chunks 4-7), times their scales
        for (int u = 0; u < 2; ++u) {
          const simde__m512i* wu = w + 4 * u;
          const int8_t* xu = x + 16 * u;
          if constexpr (vnni && TN >= 5) {  // the tokens' chains hide vpdpbusd's latency
            simde__m512i d = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), wu[0], bcast4_512(xu));
            for (int c = 1; c < 4; ++c) d = simde_mm512_dpbusd_epi32(d, wu[c], bcast4_512(xu + 4 * c));
            g[u] = simde_mm512_mullo_epi32(d, u ? sc1 : sc0);
          } else if constexpr (vnni) {
            simde__m512i d0 = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), wu[0], bcast4_512(xu));
            simde__m512i d1 = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), wu[1], bcast4_512(xu + 4));
            d0 = simde_mm512_dpbusd_epi32(d0, wu[2], bcast4_512(xu + 8));
            d1 = simde_mm512_dpbusd_epi32(d1, wu[3], bcast4_512(xu + 12));
            g[u] = simde_mm512_mullo_epi32(simde_mm512_add_epi32(d0, d1), u ? sc1 : sc0);
          } else {  // |pair| <= 2 * 63 * 127: sums of 2
            const simde__m512i e0 = simde_mm512_add_epi16(simde_mm512_maddubs_epi16(wu[0], bcast4_512(xu)),
                                                          simde_mm512_maddubs_epi16(wu[1], bcast4_512(xu + 4)));
            const simde__m512i e1 = simde_mm512_add_epi16(simde_mm512_maddubs_epi16(wu[2], bcast4_512(xu + 8)),
                                                          simde_mm512_maddubs_epi16(wu[3], bcast4_512(xu + 12)));
            g[u] = simde_mm512_add_epi32(simde_mm512_madd_epi16(e0, u ? sc1 : sc0),
                                         simde_mm512_madd_epi16(e1, u ? sc1 : sc0));
          }
        }
        // minus 32 (s bsum + s' bsum'): the two 16-sums of x side by side, one 32-bit broadcast
        const simde__m512i corr =
            simde_mm512_madd_epi16(sc32, bcast4_512(reinterpret_cast<const int8_t*>(a.x[(t0 + t) * a.nb + b].bsums + 2 * j)));
        sumi[t] = simde_mm512_add_epi32(sumi[t], simde_mm512_sub_epi32(simde_mm512_add_epi32(g[0], g[1]), corr));
      }
    }
    const __m256 dw0 = load_scales8(w0[b].d), dw1 = load_scales8(w1[b].d);
    for (int t = 0; t < TN; ++t)
      epilogue16k(sumi[t], dw0, dw1, _mm256_set1_ps(a.x[(t0 + t) * a.nb + b].d), acc0[t], acc1[t]);
  }
  for (int t = 0; t < TN; ++t) {
    store_panel_k(a, t0 + t, p, acc0[t]);
    store_panel_k(a, t0 + t, p + 1, acc1[t]);
  }
}

// Panels in pairs for 4 tokens or more; decoding and an odd last panel run the AVX2 kernels.
template <bool vnni, int bits>
void gemm_kx16(const kgemm_args& a, int64_t p0, int64_t p1) {
  int64_t p = a.m < 4 ? p1 : p0;
  const auto tile = [&](auto tn, int64_t t) {
    if constexpr (bits == 6)
      q6_kx16_tile<vnni, decltype(tn)::value>(a, p, t);
    else
      qk45x16_tile<vnni, decltype(tn)::value, bits>(a, p, t);
  };
  for (; p + 2 <= p1; p += 2) {
    for_step_tiles(a.m, tile);
  }
  gemm_kx8_avx2<bits>(a, a.m < 4 ? p0 : p, p1);
}

}  // namespace
}  // namespace qllm::kernels
