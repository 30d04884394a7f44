// The AVX2 (+FMA, F16C) table: generic float ops instantiated for xsimd::avx2, int8 kernels from
// x86_avx2_qgemm.hpp. Built with -mavx2 -mfma -mf16c: exports only a constinit table
// (arch_exports.hpp says why).
#include "kernels/arch_exports.hpp"
#include "kernels/float_ops.hpp"
#include "kernels/x86_avx2_kquant.hpp"
#include "kernels/x86_avx2_qgemm.hpp"

namespace qllm::kernels {
namespace {

struct h_avx2 {
  using arch = xsimd::fma3<xsimd::avx2>;
  using B = xsimd::batch<float, arch>;
  static B div(B a, B b) { return a / b; }
  static void cvt_f16(const uint16_t* src, float* dst) { cvt_f16_avx2(src, dst); }
  static void cvt_f16_batches(const uint16_t* src, B* dst) {
    dst[0] = B(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  }
  static void store_f16(const float* src, uint16_t* dst) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // namespace

extern constinit const kernel_table table_avx2 = {
    "avx2",
    supported_avx2,
    quantize_row_q8_0_avx2,
    quantize_row_q8_k_avx2,
    gemm_q4_0x8_avx2,
    gemm_q8_0x8_avx2,
    gemm_kx8_avx2<4>,
    gemm_kx8_avx2<5>,
    gemm_kx8_avx2<6>,
    gemm_float<h_avx2, uint16_t>,
    gemm_float<h_avx2, float>,
    dot_f32<h_avx2>,
    dot_f16_f32<h_avx2>,
    axpy_f32<h_avx2>,
    axpy_f16<h_avx2>,
    attn_scores<h_avx2, uint16_t>,
    attn_scores<h_avx2, float>,
    attn_values<h_avx2, uint16_t>,
    attn_values<h_avx2, float>,
    rmsnorm<h_avx2>,
    softmax<h_avx2>,
    silu_mul<h_avx2>,
    add<h_avx2>,
    rope<h_avx2>,
    to_f16<h_avx2>,
};

}  // namespace qllm::kernels
