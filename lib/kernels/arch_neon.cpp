// The NEON (aarch64 Advanced SIMD) table: generic float ops for xsimd::neon64, int8 kernels with
// vmull_s8 (neon_qgemm.hpp).
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/arch_exports.hpp"
#include "kernels/float_ops.hpp"
#include "kernels/neon_kquant.hpp"
#include "kernels/neon_qgemm.hpp"
#include "qllm/reference.hpp"

namespace qllm::kernels {
namespace {

struct h_neon {
  using arch = xsimd::neon64;
  using B = xsimd::batch<float, arch>;
  static B div(B a, B b) { return vdivq_f32(a, b); }
  static void cvt_f16(const uint16_t* src, float* dst) {
    const uint16x8_t h = vld1q_u16(src);
    vst1q_f32(dst, vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))));
    vst1q_f32(dst + 4, vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h))));
  }
  static void cvt_f16_batches(const uint16_t* src, B* dst) {
    const uint16x8_t h = vld1q_u16(src);
    dst[0] = B(vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))));
    dst[1] = B(vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h))));
  }
  static void store_f16(const float* src, uint16_t* dst) {
    const float16x8_t h = vcombine_f16(vcvt_f16_f32(vld1q_f32(src)), vcvt_f16_f32(vld1q_f32(src + 4)));
    vst1q_u16(dst, vreinterpretq_u16_f16(h));
  }
};

// Q8_0 quantization of activations, nearest-even rounding as ref::quantize_row_q8_0.
void quantize_row_q8_0(const float* x, block_q8_0* y, int32_t* sums, int64_t k) {
  for (int64_t b = 0; b < k / qk; ++b, x += qk) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    uint32x4_t finite = vdupq_n_u32(~0u);  // lanes with |v| <= FLT_MAX (false for NaN, inf)
    for (int i = 0; i < 8; ++i) {
      v[i] = vld1q_f32(x + 4 * i);
      finite = vandq_u32(finite, vcleq_f32(vabsq_f32(v[i]), vdupq_n_f32(3.40282347e38f)));
      amax = vmaxq_f32(amax, vabsq_f32(v[i]));
    }
    if (vminvq_u32(finite) == 0) {  // as ref::quantize_row_q8_0
      y[b].d = ref::fp16_nan_q8;
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      if (sums) sums[b] = 0;
      continue;
    }
    const float d = vmaxvq_f32(amax) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;  // a denormal d: 1/d overflows, all quants 0
    y[b].d = vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(d))), 0);
    int32_t s = 0;
    for (int i = 0; i < 8; ++i) {
      const int32x4_t q = vcvtnq_s32_f32(vmulq_n_f32(v[i], id));  // round to nearest even
      s += vaddvq_s32(q);
      const int16x4_t q16 = vmovn_s32(q);
      const int8x8_t q8 = vmovn_s16(vcombine_s16(q16, q16));
      vst1_lane_s32(reinterpret_cast<int32_t*>(y[b].qs + 4 * i), vreinterpret_s32_s8(q8), 0);
    }
    if (sums) sums[b] = s;
  }
}

// Q8_K quantization of activations, as ref::quantize_row_q8_k bit for bit.
void quantize_row_q8_k(const float* x, block_q8_k* y, int64_t k) {
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    float32x4_t amax = vdupq_n_f32(0.0f);
    uint32x4_t finite = vdupq_n_u32(~0u);
    for (int i = 0; i < qk_k / 4; ++i) {
      const float32x4_t a = vabsq_f32(vld1q_f32(x + 4 * i));
      finite = vandq_u32(finite, vcleq_f32(a, vdupq_n_f32(3.40282347e38f)));
      amax = vmaxq_f32(amax, a);
    }
    if (vminvq_u32(finite) == 0) {  // as ref::quantize_row_q8_k
      y[b].d = std::numeric_limits<float>::quiet_NaN();
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      std::memset(y[b].bsums, 0, sizeof y[b].bsums);
      continue;
    }
    const float d = vmaxvq_f32(amax) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;  // a denormal d: 1/d overflows, all quants 0
    y[b].d = d;
    for (int g = 0; g < qk_k / 16; ++g) {
      const float* xg = x + 16 * g;
      int16x8_t h[2];
      for (int u = 0; u < 2; ++u) {
        const int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 8 * u), id));  // nearest even
        const int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 8 * u + 4), id));
        h[u] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
      }
      const int8x16_t q8 = vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
      vst1q_s8(y[b].qs + 16 * g, q8);
      y[b].bsums[g] = int16_t(vaddlvq_s8(q8));
    }
  }
}

}  // namespace

extern constinit const kernel_table table_neon = {
    "neon",
    supported_neon,
    quantize_row_q8_0,
    quantize_row_q8_k,
    gemm_neon<false, true>,
    gemm_neon<false, false>,
    gemm_kx8_neon<false, 4>,
    gemm_kx8_neon<false, 5>,
    gemm_kx8_neon<false, 6>,
    gemm_float<h_neon, uint16_t>,
    gemm_float<h_neon, float>,
    dot_f32<h_neon>,
    dot_f16_f32<h_neon>,
    axpy_f32<h_neon>,
    axpy_f16<h_neon>,
    attn_scores<h_neon, uint16_t>,
    attn_scores<h_neon, float>,
    attn_values<h_neon, uint16_t>,
    attn_values<h_neon, float>,
    rmsnorm<h_neon>,
    softmax<h_neon>,
    silu_mul<h_neon>,
    add<h_neon>,
    rope<h_neon>,
    to_f16<h_neon>,
};

}  // namespace qllm::kernels
