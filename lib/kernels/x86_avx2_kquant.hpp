// AVX2 k-quant kernels over the 8-row super-block panels (kernel_table.hpp), Q8_K activations.
// Each 32-bit lane is one row. Per super-block the integer sums of ref::dot_q*_k_q8_k are exact
// (maddubs into int16 pairs, bounded below, then madd by the row's scale into int32), followed by
// the same float epilogue as the reference. Internal linkage only: included by the AVX2 TU.
#pragma once
#include <immintrin.h>

#include <type_traits>

#include "kernels/kernel_table.hpp"
#include "kernels/token_tiles.hpp"
#include "kernels/x86_avx2_qgemm.hpp"

namespace qllm::kernels {
namespace {

// (v[0], v[0], v[2], v[2], ...) and (v[1], v[1], v[3], v[3], ...) over int16 lanes: the first and
// second scale of each row's pair in both halves of its 32-bit lane.
inline __m256i dup_even16(__m256i v) {
  return _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(v, 0xa0), 0xa0);
}
inline __m256i dup_odd16(__m256i v) {
  return _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(v, 0xf5), 0xf5);
}
inline __m256 load_scales8(const uint16_t* d) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d)));
}
inline __m256i bcast4(const int8_t* x) { return _mm256_set1_epi32(load_i32(x)); }

// x's sums over a super-block's 8 sub-blocks of 32 (|sum| <= 32 * 127) as int16 pairs, for the
// mins of Q4_K/Q5_K: the pair of sub-blocks 2i, 2i+1 in out[xpair_word(i)]. Stored before the
// sub-block loop and broadcast from L1 after it (not built from scalars per token: 3-5 % of the
// AVX-512 step tile).
inline void store_subblock_pairs(const block_q8_k& xb, int32_t* out) {
  const __m256i s = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)),
                                      _mm256_set1_epi16(1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_packs_epi32(s, s));
}
constexpr int xpair_word(int i) { return i < 2 ? i : i + 2; }

inline void store_panel_k(const kgemm_args& a, int64_t t, int64_t p, __m256 v) {
  const qgemm_args q{nullptr, 0, a.n, nullptr, nullptr, nullptr, 0, a.y, a.ldy};
  store_panel(q, t, p, v);
}

// The k-quant tiles prefetch each panel block's lines 4 KiB ahead (they used two panel blocks,
// 2.4-3.4 KiB): 7B Q4_K_M tg32, QLLM_ISA=avx2, alternating runs, 2.72-2.95 -> 2.96-3.02 tok/s on
// one thread, 5.23-5.34 -> 5.52-5.57 on two.
inline constexpr int kKPrefetchBytes = 4096;
inline void prefetch_lines(const void* p, int lines) {
  for (int i = 0; i < lines; ++i) _mm_prefetch(static_cast<const char*>(p) + 64 * i, _MM_HINT_T0);
}

// Q4_K (bits 4) and Q5_K (bits 5) panels, TN tokens.
template <int TN, int bits>
void qk45x8_tile(const kgemm_args& a, int64_t p, int64_t t0) {
  using P = std::conditional_t<bits == 4, block_q4_kx8, block_q5_kx8>;
  const P* wp = static_cast<const P*>(a.w) + p * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m10 = _mm256_set1_epi8(0x10);
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    const P& wb = wp[b];
    const char* ahead = reinterpret_cast<const char*>(&wb) + kKPrefetchBytes;
    __m256i sumi[TN];
    for (int t = 0; t < TN; ++t) sumi[t] = _mm256_setzero_si256();
    alignas(32) int32_t xpairs[TN][8];
    for (int t = 0; t < TN; ++t) store_subblock_pairs(a.x[(t0 + t) * a.nb + b], xpairs[t]);
    for (int j = 0; j < 8; ++j) {
      prefetch_lines(ahead + j * (sizeof(P) / 8), int(sizeof(P) / 8 / 64) + 1);
      const int i = j / 2;
      const __m256i scv = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.sc[i])));
      const __m256i sc = j % 2 ? dup_odd16(scv) : dup_even16(scv);
      __m256i w[8];
      for (int c = 0; c < 8; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs[i] + 32 * c));
        w[c] = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(raw, 4) : raw, m4);
        if constexpr (bits == 5) {
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qh[c]));
          // bit j of each byte to bit 4 (16-bit shifts of at most 4 keep bit 4 within its byte)
          const __m256i hb = j < 4 ? _mm256_slli_epi16(qh, 4 - j) : _mm256_srli_epi16(qh, j - 4);
          w[c] = _mm256_or_si256(w[c], _mm256_and_si256(hb, m10));
        }
      }
      for (int t = 0; t < TN; ++t) {
        const int8_t* x = a.x[(t0 + t) * a.nb + b].qs + 32 * j;
        if constexpr (bits == 4) {  // |pair| <= 2 * 15 * 127, 8 pairs summed fit int16
          __m256i s = _mm256_maddubs_epi16(w[0], bcast4(x));
          for (int c = 1; c < 8; ++c) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[c], bcast4(x + 4 * c)));
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s, sc));
        } else {  // |pair| <= 2 * 31 * 127: sums of 4
          __m256i s0 = _mm256_maddubs_epi16(w[0], bcast4(x));
          __m256i s1 = _mm256_maddubs_epi16(w[4], bcast4(x + 16));
          for (int c = 1; c < 4; ++c) {
            s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(w[c], bcast4(x + 4 * c)));
            s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(w[c + 4], bcast4(x + 16 + 4 * c)));
          }
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(s0, sc), _mm256_madd_epi16(s1, sc)));
        }
      }
    }
    const __m256 dw = load_scales8(wb.d), dmw = load_scales8(wb.dmin);
    for (int t = 0; t < TN; ++t) {
      const block_q8_k& xb = a.x[(t0 + t) * a.nb + b];
      __m256i summ = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        const __m256i mv = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.mn[i])));
        summ = _mm256_add_epi32(summ, _mm256_madd_epi16(mv, _mm256_set1_epi32(xpairs[t][xpair_word(i)])));
      }
      const __m256 dx = _mm256_set1_ps(xb.d);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_mul_ps(dw, dx), acc[t]);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_setzero_si256(), summ)),
                               _mm256_mul_ps(dmw, dx), acc[t]);
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_k(a, t0 + t, p, acc[t]);
}

// Q6_K panels: quants 0..63, int8 group scales; the -32 offset through the group sums of x.
template <int TN>
void q6_kx8_tile(const kgemm_args& a, int64_t p, int64_t t0) {
  const auto* wp = static_cast<const block_q6_kx8*>(a.w) + p * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    const block_q6_kx8& wb = wp[b];
    const char* ahead = reinterpret_cast<const char*>(&wb) + kKPrefetchBytes;
    __m256i sumi[TN];
    for (int t = 0; t < TN; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      prefetch_lines(ahead + j * (sizeof(block_q6_kx8) / 8), int(sizeof(block_q6_kx8) / 8 / 64) + 1);
      const int i = j / 2, h = j / 4, s = j % 4;
      const __m256i scv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.sc[j])));
      const __m256i sc0 = dup_even16(scv), sc1 = dup_odd16(scv);
      __m256i w[8];
      for (int c = 0; c < 8; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.ql[i] + 32 * c));
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qh[h] + 32 * c));
        // bits 2s..2s+1 of each byte to bits 4..5
        const __m256i hb = s == 0 ? _mm256_slli_epi16(qh, 4)
                           : s == 1 ? _mm256_slli_epi16(qh, 2)
                           : s == 2 ? qh
                                    : _mm256_srli_epi16(qh, 2);
        w[c] = _mm256_or_si256(_mm256_and_si256(j % 2 ? _mm256_srli_epi16(raw, 4) : raw, m4),
                               _mm256_and_si256(hb, m30));
      }
      for (int t = 0; t < TN; ++t) {
        const int8_t* x = a.x[(t0 + t) * a.nb + b].qs + 32 * j;
        // |pair| <= 2 * 63 * 127: sums of 2
        __m256i g[4];
        for (int u = 0; u < 4; ++u)
          g[u] = _mm256_add_epi16(_mm256_maddubs_epi16(w[2 * u], bcast4(x + 8 * u)),
                                  _mm256_maddubs_epi16(w[2 * u + 1], bcast4(x + 8 * u + 4)));
        const __m256i s0 = _mm256_add_epi32(_mm256_madd_epi16(g[0], sc0), _mm256_madd_epi16(g[1], sc0));
        const __m256i s1 = _mm256_add_epi32(_mm256_madd_epi16(g[2], sc1), _mm256_madd_epi16(g[3], sc1));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(s0, s1));
      }
    }
    const __m256 dw = load_scales8(wb.d);
    for (int t = 0; t < TN; ++t) {
      const block_q8_k& xb = a.x[(t0 + t) * a.nb + b];
      __m256i sumb = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {  // x's two 16-sums of groups 2j, 2j+1: one 32-bit broadcast
        const __m256i scv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.sc[j])));
        sumb = _mm256_add_epi32(sumb, _mm256_madd_epi16(scv, bcast4(reinterpret_cast<const int8_t*>(xb.bsums + 2 * j))));
      }
      const __m256i total = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(sumb, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), acc[t]);
    }
  }
  for (int t = 0; t < TN; ++t) store_panel_k(a, t0 + t, p, acc[t]);
}

template <int bits>
void gemm_kx8_avx2(const kgemm_args& a, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p)
    for_step_tiles(a.m, [&](auto tn, int64_t t) {
      if constexpr (bits == 6)
        q6_kx8_tile<decltype(tn)::value>(a, p, t);
      else
        qk45x8_tile<decltype(tn)::value, bits>(a, p, t);
    });
}

}  // namespace
}  // namespace qllm::kernels
