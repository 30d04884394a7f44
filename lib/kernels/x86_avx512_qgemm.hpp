// AVX-512 (BW, optionally VNNI) int8 kernels: two 8-row panels per zmm (16 rows, one per lane).
// Written with SIMDe's simde_mm512_* names: compiled with -mavx512* they are the native
// instructions; compiled with only -mavx2 (the emulated CI build) they are SIMDe's portable
// implementations, so the same source is tested on machines without AVX-512. The float epilogue
// runs on all 16 lanes at once: each lane is one row, and each row sees the canonical order of
// reference.hpp (acc = fma(float(sumi), d_w * d_x, acc), block after block), so a zmm epilogue is
// bit-identical to two 8-lane ones with half the instructions.
// Internal linkage only: this header is included by the avx512 and avx512_vnni TUs.
#pragma once
#include <simde/x86/avx512.h>

#include <type_traits>

#include "kernels/x86_avx2_qgemm.hpp"

namespace qllm::kernels {
namespace {

inline simde__m512i load_pair(const void* lo, const void* hi) {
  const simde__m256i a = _mm256_loadu_si256(static_cast<const __m256i*>(lo));
  const simde__m256i b = _mm256_loadu_si256(static_cast<const __m256i*>(hi));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(a), b, 1);
}

// 16 float lanes from two 8-lane halves, and int32 -> float: the native instructions with
// -mavx512f; the emulated build (whose SIMDe lacks them) goes through 256-bit halves.
inline simde__m512 join_ps(__m256 lo, __m256 hi) {
#if defined(__AVX512F__)
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
#else
  return simde_mm512_castsi512_ps(simde_mm512_inserti64x4(
      simde_mm512_castsi256_si512(_mm256_castps_si256(lo)), _mm256_castps_si256(hi), 1));
#endif
}
inline simde__m512 cvt_i32_ps(simde__m512i v) {
#if defined(__AVX512F__)
  return _mm512_cvtepi32_ps(v);
#else
  return join_ps(_mm256_cvtepi32_ps(simde_mm512_castsi512_si256(v)),
                 _mm256_cvtepi32_ps(simde_mm512_extracti64x4_epi64(v, 1)));
#endif
}
inline simde__m512 load_scales16(const uint16_t* d0, const uint16_t* d1) {
  const __m128i h0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d0));
  const __m128i h1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d1));
#if defined(__AVX512F__)
  return _mm512_cvtph_ps(_mm256_set_m128i(h1, h0));
#else
  return join_ps(_mm256_cvtph_ps(h0), _mm256_cvtph_ps(h1));
#endif
}
inline void store_panels16(const qgemm_args& a, int64_t t, int64_t p, simde__m512 acc) {
  alignas(64) float buf[16];  // through memory: gcc 12 warns on its own 512 -> 256-bit extracts
  simde_mm512_store_ps(buf, acc);
  store_panel(a, t, p, _mm256_load_ps(buf));
  store_panel(a, t, p + 1, _mm256_load_ps(buf + 8));
}

// Every line of blocks b..b+3 of both panels, 2 KiB ahead, once per 4 blocks. Touching one line
// per 144-byte block 1 KiB ahead (as before) left the first token tile of a small-M step waiting
// on the weight stream: 11008x4096 Q4_0, M = 8, 2 threads, Zen 5, 302-307 -> 376-388 GOP/s
// (alternating, medians); 4 KiB ahead measured 345.
template <class Block>
inline void prefetch_pair4(const Block* w0, const Block* w1, int64_t b) {
  constexpr int lines = 4 * int(sizeof(Block)) / 64;
  for (int l = 0; l < lines; ++l) {
    _mm_prefetch(reinterpret_cast<const char*>(w0 + b) + 2048 + 64 * l, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1 + b) + 2048 + 64 * l, _MM_HINT_T0);
  }
}

// Q4_0 panel pairs, TN tokens. VNNI: four vpdpbusd chains, the first seeded with -8 sum(x)
// (the offset of the nibbles).
template <bool vnni, int TN>
void q4_0x16_tile(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* w0 = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const auto* w1 = w0 + a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f);
  const simde__m512i ones = simde_mm512_set1_epi16(1);
  simde__m512 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = simde_mm512_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    if ((b & 3) == 0) prefetch_pair4(w0, w1, b);
    simde__m512i w[8];
    for (int c = 0; c < 4; ++c) {
      const simde__m512i raw = load_pair(w0[b].qs + 32 * c, w1[b].qs + 32 * c);
      w[c] = simde_mm512_and_si512(raw, m4);
      w[c + 4] = simde_mm512_and_si512(simde_mm512_srli_epi16(raw, 4), m4);
    }
    const simde__m512 dw = load_scales16(w0[b].d, w1[b].d);
    for (int t = 0; t < TN; ++t) {
      const int64_t xi = (t0 + t) * a.nb + b;
      const int8_t* x = a.x[xi].qs;
      simde__m512i si;
      if constexpr (vnni) {
        simde__m512i s4[4];
        s4[0] = simde_mm512_dpbusd_epi32(simde_mm512_set1_epi32(-8 * a.xsum[xi]), w[0], simde_mm512_set1_epi32(load_i32(x)));
        for (int j = 1; j < 4; ++j)
          s4[j] = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), w[j], simde_mm512_set1_epi32(load_i32(x + 4 * j)));
        for (int j = 4; j < 8; ++j)
          s4[j - 4] = simde_mm512_dpbusd_epi32(s4[j - 4], w[j], simde_mm512_set1_epi32(load_i32(x + 4 * j)));
        si = simde_mm512_add_epi32(simde_mm512_add_epi32(s4[0], s4[1]), simde_mm512_add_epi32(s4[2], s4[3]));
      } else {
        simde__m512i s = simde_mm512_maddubs_epi16(w[0], simde_mm512_set1_epi32(load_i32(x)));
        for (int j = 1; j < 8; ++j)
          s = simde_mm512_add_epi16(s, simde_mm512_maddubs_epi16(w[j], simde_mm512_set1_epi32(load_i32(x + 4 * j))));
        si = simde_mm512_sub_epi32(simde_mm512_madd_epi16(s, ones), simde_mm512_set1_epi32(8 * a.xsum[xi]));
      }
      const simde__m512 d = simde_mm512_mul_ps(dw, simde_mm512_set1_ps(a.xd[xi]));
      acc[t] = simde_mm512_fmadd_ps(cvt_i32_ps(si), d, acc[t]);
    }
  }
  for (int t = 0; t < TN; ++t) store_panels16(a, t0 + t, p, acc[t]);
}

// Q8_0 panel pairs, TN tokens. VNNI: w + 128 (w ^ 0x80) is unsigned, so vpdpbusd takes it
// against the signed x as it is, and the chain seeded with -128 sum(x) takes the offset back
// off: one xor per chunk for all tokens, where dot(|w|, sign(x, w)) cost a sign per token.
// Without VNNI, maddubs would saturate on (w + 128) x pairs, so that path keeps |w| and sign.
template <bool vnni, int TN>
void q8_0x16_tile(const qgemm_args& a, int64_t p, int64_t t0) {
  const auto* w0 = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  const auto* w1 = w0 + a.nb;
  const simde__m512i ones = simde_mm512_set1_epi16(1);
  const simde__m512i zero = simde_mm512_setzero_si512();
  const simde__m512i flip = simde_mm512_set1_epi8(char(0x80));
  simde__m512 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = simde_mm512_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    if ((b & 3) == 0) prefetch_pair4(w0, w1, b);
    simde__m512i si[TN][2];  // two chains per token (even / odd chunks)
    for (int t = 0; t < TN; ++t) {
      si[t][0] = vnni ? simde_mm512_set1_epi32(-128 * a.xsum[(t0 + t) * a.nb + b]) : zero;
      si[t][1] = zero;
    }
    for (int j = 0; j < 8; ++j) {
      const simde__m512i wv = load_pair(w0[b].qs + 32 * j, w1[b].qs + 32 * j);
      if constexpr (vnni) {
        const simde__m512i wu = simde_mm512_xor_si512(wv, flip);  // w + 128
        for (int t = 0; t < TN; ++t) {
          const simde__m512i xv = simde_mm512_set1_epi32(load_i32(a.x[(t0 + t) * a.nb + b].qs + 4 * j));
          si[t][j & 1] = simde_mm512_dpbusd_epi32(si[t][j & 1], wu, xv);
        }
      } else {
        const simde__m512i wabs = simde_mm512_abs_epi8(wv);
        const simde__mmask64 neg = simde_mm512_movepi8_mask(wv);
        for (int t = 0; t < TN; ++t) {
          const simde__m512i xv = simde_mm512_set1_epi32(load_i32(a.x[(t0 + t) * a.nb + b].qs + 4 * j));
          const simde__m512i xs = simde_mm512_mask_sub_epi8(xv, neg, zero, xv);  // x * sign(w)
          si[t][j & 1] = simde_mm512_add_epi32(si[t][j & 1], simde_mm512_madd_epi16(simde_mm512_maddubs_epi16(wabs, xs), ones));
        }
      }
    }
    const simde__m512 dw = load_scales16(w0[b].d, w1[b].d);
    for (int t = 0; t < TN; ++t) {
      const int64_t xi = (t0 + t) * a.nb + b;
      const simde__m512 d = simde_mm512_mul_ps(dw, simde_mm512_set1_ps(a.xd[xi]));
      acc[t] = simde_mm512_fmadd_ps(cvt_i32_ps(simde_mm512_add_epi32(si[t][0], si[t][1])), d, acc[t]);
    }
  }
  for (int t = 0; t < TN; ++t) store_panels16(a, t0 + t, p, acc[t]);
}

// VNNI prompt tiles over four panels (32 rows, two zmm of rows) and TN tokens: each broadcast
// activation word feeds two vpdpbusd, where the panel-pair tiles above spend one broadcast load
// per vpdpbusd (per block and 4 tokens: 16 weight loads, 32 broadcasts and 10 scale and sum loads
// for 32 vpdpbusd; here 76 loads feed 64), and the load ports, not vpdpbusd, were the limit.
// Eight independent chains, one per token and row half, cover vpdpbusd's latency (4 cycles on
// Zen 5, 2 per cycle). 11008x4096, 2 threads, Zen 5, pair tiles against these, alternating
// (medians): Q8_0 M = 512 614 -> 898 GOP/s, M = 8 534 -> 733; Q4_0 852 -> 1036 and 813 -> 984.
// Same exact int32 sums and float epilogue.
template <class Block>
inline void prefetch_quad4(const Block* const w[4], int64_t b) {
  prefetch_pair4(w[0], w[1], b);
  prefetch_pair4(w[2], w[3], b);
}

// Chunk c of block b of four Q4_0 panels, nibbles unpacked (lo/hi of rows p, p+1 and p+2, p+3),
// and one token's step over it: x its 32 quants, si its two chains.
struct q4_quad {
  simde__m512i lo0, hi0, lo1, hi1;
};
inline q4_quad unpack_q4_quad(const block_q4_0x8* const w[4], int64_t b, int c, simde__m512i m4) {
  const simde__m512i r0 = load_pair(w[0][b].qs + 32 * c, w[1][b].qs + 32 * c);
  const simde__m512i r1 = load_pair(w[2][b].qs + 32 * c, w[3][b].qs + 32 * c);
  return {simde_mm512_and_si512(r0, m4), simde_mm512_and_si512(simde_mm512_srli_epi16(r0, 4), m4),
          simde_mm512_and_si512(r1, m4), simde_mm512_and_si512(simde_mm512_srli_epi16(r1, 4), m4)};
}
inline void q4_quad_step(simde__m512i si[2], const q4_quad& u, const int8_t* x, int c) {
  const simde__m512i xl = simde_mm512_set1_epi32(load_i32(x + 4 * c));
  const simde__m512i xh = simde_mm512_set1_epi32(load_i32(x + 16 + 4 * c));
  si[0] = simde_mm512_dpbusd_epi32(si[0], u.lo0, xl);
  si[1] = simde_mm512_dpbusd_epi32(si[1], u.lo1, xl);
  si[0] = simde_mm512_dpbusd_epi32(si[0], u.hi0, xh);
  si[1] = simde_mm512_dpbusd_epi32(si[1], u.hi1, xh);
}

// The same for Q8_0: chunk j of four panels as w + 128 (two zmm of rows), and one token's step.
struct q8_quad {
  simde__m512i u0, u1;
};
inline q8_quad load_q8_quad(const block_q8_0x8* const w[4], int64_t b, int j) {
  const simde__m512i flip = simde_mm512_set1_epi8(char(0x80));
  return {simde_mm512_xor_si512(load_pair(w[0][b].qs + 32 * j, w[1][b].qs + 32 * j), flip),
          simde_mm512_xor_si512(load_pair(w[2][b].qs + 32 * j, w[3][b].qs + 32 * j), flip)};
}
inline void q8_quad_step(simde__m512i si[2], const q8_quad& u, const int8_t* x, int j) {
  const simde__m512i xv = simde_mm512_set1_epi32(load_i32(x + 4 * j));
  si[0] = simde_mm512_dpbusd_epi32(si[0], u.u0, xv);
  si[1] = simde_mm512_dpbusd_epi32(si[1], u.u1, xv);
}

template <int TN>
void q4_0x32_tile_vnni(const qgemm_args& a, int64_t p, int64_t t0) {
  const block_q4_0x8* w[4];
  for (int r = 0; r < 4; ++r) w[r] = static_cast<const block_q4_0x8*>(a.w) + (p + r) * a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f);
  simde__m512 acc[TN][2];
  for (int t = 0; t < TN; ++t) acc[t][0] = acc[t][1] = simde_mm512_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    if ((b & 3) == 0) prefetch_quad4(w, b);
    simde__m512i si[TN][2];  // rows of panels p, p+1 and of p+2, p+3; seeded with -8 sum(x)
    for (int t = 0; t < TN; ++t) si[t][0] = si[t][1] = simde_mm512_set1_epi32(-8 * a.xsum[(t0 + t) * a.nb + b]);
    for (int c = 0; c < 4; ++c) {
      const q4_quad u = unpack_q4_quad(w, b, c, m4);
      for (int t = 0; t < TN; ++t) q4_quad_step(si[t], u, a.x[(t0 + t) * a.nb + b].qs, c);
    }
    const simde__m512 dw0 = load_scales16(w[0][b].d, w[1][b].d), dw1 = load_scales16(w[2][b].d, w[3][b].d);
    for (int t = 0; t < TN; ++t) {
      const simde__m512 xd = simde_mm512_set1_ps(a.xd[(t0 + t) * a.nb + b]);
      acc[t][0] = simde_mm512_fmadd_ps(cvt_i32_ps(si[t][0]), simde_mm512_mul_ps(dw0, xd), acc[t][0]);
      acc[t][1] = simde_mm512_fmadd_ps(cvt_i32_ps(si[t][1]), simde_mm512_mul_ps(dw1, xd), acc[t][1]);
    }
  }
  for (int t = 0; t < TN; ++t) {
    store_panels16(a, t0 + t, p, acc[t][0]);
    store_panels16(a, t0 + t, p + 2, acc[t][1]);
  }
}

template <int TN>
void q8_0x32_tile_vnni(const qgemm_args& a, int64_t p, int64_t t0) {
  const block_q8_0x8* w[4];
  for (int r = 0; r < 4; ++r) w[r] = static_cast<const block_q8_0x8*>(a.w) + (p + r) * a.nb;
  simde__m512 acc[TN][2];
  for (int t = 0; t < TN; ++t) acc[t][0] = acc[t][1] = simde_mm512_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    if ((b & 3) == 0) prefetch_quad4(w, b);
    simde__m512i si[TN][2];  // seeded with -128 sum(x): the weights go in as w + 128
    for (int t = 0; t < TN; ++t) si[t][0] = si[t][1] = simde_mm512_set1_epi32(-128 * a.xsum[(t0 + t) * a.nb + b]);
    for (int j = 0; j < 8; ++j) {
      const q8_quad u = load_q8_quad(w, b, j);
      for (int t = 0; t < TN; ++t) q8_quad_step(si[t], u, a.x[(t0 + t) * a.nb + b].qs, j);
    }
    const simde__m512 dw0 = load_scales16(w[0][b].d, w[1][b].d), dw1 = load_scales16(w[2][b].d, w[3][b].d);
    for (int t = 0; t < TN; ++t) {
      const simde__m512 xd = simde_mm512_set1_ps(a.xd[(t0 + t) * a.nb + b]);
      acc[t][0] = simde_mm512_fmadd_ps(cvt_i32_ps(si[t][0]), simde_mm512_mul_ps(dw0, xd), acc[t][0]);
      acc[t][1] = simde_mm512_fmadd_ps(cvt_i32_ps(si[t][1]), simde_mm512_mul_ps(dw1, xd), acc[t][1]);
    }
  }
  for (int t = 0; t < TN; ++t) {
    store_panels16(a, t0 + t, p, acc[t][0]);
    store_panels16(a, t0 + t, p + 2, acc[t][1]);
  }
}

// A step of 5-8 decoding streams (continuous batching) is a small-M GEMM. With tiles of 4
// tokens the first tile over a panel group streams the weights from memory at the speed of 4
// tokens of arithmetic (about 26 GB/s a core on Zen 4, the bus of one core) and the second reads
// them again from L2; one pass of all tokens halves the bytes per cycle. It reads the
// activations interleaved by ops::quantize_activations (block b of every token side by side), so
// that one pointer and constant offsets reach every token: 16 int32 chains stay in registers,
// the float accumulators in an L1 buffer (one load and store each per block). Same exact int32
// sums and float epilogue as the tiles above.
template <bool q4, int TN>
void qx32_tile_all_vnni(const qgemm_args& a, int64_t p) {
  using Block = std::conditional_t<q4, block_q4_0x8, block_q8_0x8>;
  const Block* w[4];
  for (int r = 0; r < 4; ++r) w[r] = static_cast<const Block*>(a.w) + (p + r) * a.nb;
  const simde__m512i m4 = simde_mm512_set1_epi8(0x0f);
  alignas(64) float acc[TN][2][16];
  for (int t = 0; t < TN; ++t)
    for (int h = 0; h < 2; ++h) simde_mm512_store_ps(acc[t][h], simde_mm512_setzero_ps());
  for (int64_t b = 0; b < a.nb; ++b) {
    if ((b & 3) == 0) prefetch_quad4(w, b);
    const int8_t* xq = a.xt_q + 32 * TN * b;
    const int32_t* xsum = a.xt_sum + TN * b;
    simde__m512i si[TN][2];  // rows of panels p, p+1 and of p+2, p+3, seeded as in the tiles above
    for (int t = 0; t < TN; ++t) si[t][0] = si[t][1] = simde_mm512_set1_epi32((q4 ? -8 : -128) * xsum[t]);
    if constexpr (q4) {
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const q4_quad u = unpack_q4_quad(w, b, c, m4);
        for (int t = 0; t < TN; ++t) q4_quad_step(si[t], u, xq + 32 * t, c);
      }
    } else {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const q8_quad u = load_q8_quad(w, b, j);
        for (int t = 0; t < TN; ++t) q8_quad_step(si[t], u, xq + 32 * t, j);
      }
    }
    const simde__m512 dw0 = load_scales16(w[0][b].d, w[1][b].d), dw1 = load_scales16(w[2][b].d, w[3][b].d);
    const float* xd = a.xt_d + TN * b;
    for (int t = 0; t < TN; ++t) {
      const simde__m512 d = simde_mm512_set1_ps(xd[t]);
      simde_mm512_store_ps(acc[t][0], simde_mm512_fmadd_ps(cvt_i32_ps(si[t][0]), simde_mm512_mul_ps(dw0, d),
                                                           simde_mm512_load_ps(acc[t][0])));
      simde_mm512_store_ps(acc[t][1], simde_mm512_fmadd_ps(cvt_i32_ps(si[t][1]), simde_mm512_mul_ps(dw1, d),
                                                           simde_mm512_load_ps(acc[t][1])));
    }
  }
  for (int t = 0; t < TN; ++t) {
    store_panels16(a, t, p, simde_mm512_load_ps(acc[t][0]));
    store_panels16(a, t, p + 2, simde_mm512_load_ps(acc[t][1]));
  }
}

// The decoding GEMV of VNNI machines (fewer than 4 tokens): one panel, one weight stream per
// thread, few instructions per weight byte. Q4_0: the low nibbles masked (& 0x0f) and the high
// ones masked in place (& 0xf0, 16 q): vpdpbusd sums 16 dot(q_hi, x) exactly, and an arithmetic
// shift by 4 divides that sum exactly: one shift per token, none per chunk. Q8_0: w ^ 0x80 as in
// q8_0x16_tile. Both sums are the exact int32 of the reference, then its float epilogue.
inline __m256i bcast_x(const int8_t* x) { return _mm256_set1_epi32(load_i32(x)); }

template <int TN>
void q4_0x8_gemv_vnni(const qgemm_args& a, int64_t p, int64_t t0, int ahead) {
  const auto* wp = static_cast<const block_q4_0x8*>(a.w) + p * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0f), mf0 = _mm256_set1_epi8(char(0xf0));
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  const auto block = [&](int64_t b) {
    const block_q4_0x8& wb = wp[b];
    __m256i lo[4], hi[4];
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * c));
      lo[c] = _mm256_and_si256(raw, m4);
      hi[c] = _mm256_and_si256(raw, mf0);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    for (int t = 0; t < TN; ++t) {
      const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
      const int8_t* x = xb.qs;
      __m256i l0 = _mm256_slli_epi32(_mm256_set1_epi32(-a.xsum[(t0 + t) * a.nb + b]), 3);
      __m256i l1 = simde_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo[1], bcast_x(x + 4));
      __m256i h0 = simde_mm256_dpbusd_epi32(_mm256_setzero_si256(), hi[0], bcast_x(x + 16));
      __m256i h1 = simde_mm256_dpbusd_epi32(_mm256_setzero_si256(), hi[1], bcast_x(x + 20));
      l0 = simde_mm256_dpbusd_epi32(l0, lo[0], bcast_x(x));
      l0 = simde_mm256_dpbusd_epi32(l0, lo[2], bcast_x(x + 8));
      l1 = simde_mm256_dpbusd_epi32(l1, lo[3], bcast_x(x + 12));
      h0 = simde_mm256_dpbusd_epi32(h0, hi[2], bcast_x(x + 24));
      h1 = simde_mm256_dpbusd_epi32(h1, hi[3], bcast_x(x + 28));
      const __m256i si = _mm256_add_epi32(_mm256_add_epi32(l0, l1), _mm256_srai_epi32(_mm256_add_epi32(h0, h1), 4));
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a.xd[(t0 + t) * a.nb + b]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), d, acc[t]);
    }
  };
  for_blocks(wp, a.nb, ahead, block);
  for (int t = 0; t < TN; ++t) store_panel(a, t0 + t, p, acc[t]);
}

template <int TN>
void q8_0x8_gemv_vnni(const qgemm_args& a, int64_t p, int64_t t0, int ahead) {
  const auto* wp = static_cast<const block_q8_0x8*>(a.w) + p * a.nb;
  const __m256i flip = _mm256_set1_epi8(char(0x80));
  __m256 acc[TN];
  for (int t = 0; t < TN; ++t) acc[t] = _mm256_setzero_ps();
  const auto block = [&](int64_t b) {
    const block_q8_0x8& wb = wp[b];
    __m256i wu[8];  // w + 128
    for (int c = 0; c < 8; ++c)
      wu[c] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * c)), flip);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
    for (int t = 0; t < TN; ++t) {
      const block_q8_0& xb = a.x[(t0 + t) * a.nb + b];
      const int8_t* x = xb.qs;
      __m256i s[4];
      s[0] = _mm256_slli_epi32(_mm256_set1_epi32(-a.xsum[(t0 + t) * a.nb + b]), 7);
      for (int c = 1; c < 4; ++c) s[c] = simde_mm256_dpbusd_epi32(_mm256_setzero_si256(), wu[c], bcast_x(x + 4 * c));
      s[0] = simde_mm256_dpbusd_epi32(s[0], wu[0], bcast_x(x));
      for (int c = 4; c < 8; ++c) s[c - 4] = simde_mm256_dpbusd_epi32(s[c - 4], wu[c], bcast_x(x + 4 * c));
      const __m256i si = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
      const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a.xd[(t0 + t) * a.nb + b]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), d, acc[t]);
    }
  };
  for_blocks(wp, a.nb, ahead, block);
  for (int t = 0; t < TN; ++t) store_panel(a, t0 + t, p, acc[t]);
}

// Panels in fours on VNNI machines, then in pairs; an odd last panel goes through a 256-bit
// kernel. Fewer than 4 tokens (the memory-bound GEMV of decoding) also take a 256-bit kernel: one
// weight stream per thread measured about 2x faster than two on Zen 4 (docs/kernels.md). Same
// canonical order either way.
template <bool vnni, bool q4>
void gemm_x16(const qgemm_args& a, int64_t p0, int64_t p1) {
  int64_t p = a.m < 4 ? p1 : p0;
  if constexpr (vnni) {
    // 5-8 tokens, interleaved: one pass over each group. More: the tiles of 4, whose sums stay
    // in registers, are faster once the weights are in cache (one pass measured 0.85x at M = 64
    // and 512).
    for_interleaved_step(a, [&](auto tn) {
      for (; p + 4 <= p1; p += 4) qx32_tile_all_vnni<q4, decltype(tn)::value>(a, p);
    });
    for (; p + 4 <= p1; p += 4) {
      for_token_tiles(a.m, [&](auto tn, int64_t t) {
        if constexpr (q4)
          q4_0x32_tile_vnni<decltype(tn)::value>(a, p, t);
        else
          q8_0x32_tile_vnni<decltype(tn)::value>(a, p, t);
      });
    }
  }
  for (; p + 2 <= p1; p += 2) {
    for_step_tiles(a.m, [&](auto tn, int64_t t) {
      if constexpr (q4)
        q4_0x16_tile<vnni, decltype(tn)::value>(a, p, t);
      else
        q8_0x16_tile<vnni, decltype(tn)::value>(a, p, t);
    });
  }
  const int64_t rest = a.m < 4 ? p0 : p;
  const int ahead = a.m >= 4 ? step_prefetch_bytes() : q_prefetch_bytes();
  for (int64_t r = rest; r < p1; ++r) {
    for_token_tiles(a.m, [&](auto tn, int64_t t) {
      constexpr int TN = decltype(tn)::value;
      if constexpr (vnni && q4)
        q4_0x8_gemv_vnni<TN>(a, r, t, ahead);
      else if constexpr (vnni)
        q8_0x8_gemv_vnni<TN>(a, r, t, ahead);
      else if constexpr (q4)
        q4_0x8_tile<TN, dot_maddubs>(a, r, t, ahead);
      else
        q8_0x8_tile<TN, dot_maddubs>(a, r, t, ahead);
    });
  }
}

}  // namespace
}  // namespace qllm::kernels
