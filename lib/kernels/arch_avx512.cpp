// The AVX-512 (F/BW/VL/DQ) int8 kernels on zmm. The table (dispatch.cpp) takes its float ops
// from the AVX2 table: 8 lanes keep the canonical order, and this TU stays free of xsimd so its
// flags cannot leak into shared inline code. Exports functions only (arch_exports.hpp).
#include "kernels/arch_exports.hpp"
#include "kernels/x86_avx512_kquant.hpp"
#include "kernels/x86_avx512_qgemm.hpp"

namespace qllm::kernels {

void gemm_q4_0x8_avx512(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_x16<false, true>(a, p0, p1);
}
void gemm_q8_0x8_avx512(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_x16<false, false>(a, p0, p1);
}

void gemm_q4_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<false, 4>(a, p0, p1);
}
void gemm_q5_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<false, 5>(a, p0, p1);
}
void gemm_q6_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<false, 6>(a, p0, p1);
}

}  // namespace qllm::kernels
