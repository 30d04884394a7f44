// The NEON + dotprod int8 kernels: as neon, with vdotq_laneq_s32 as the int8 dot primitive.
// Exports functions only (arch_exports.hpp); dispatch.cpp assembles the table.
#include "kernels/arch_exports.hpp"
#include "kernels/neon_kquant.hpp"

namespace qllm::kernels {

void gemm_q4_0x8_neon_dotprod(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_neon<true, true>(a, p0, p1);
}
void gemm_q8_0x8_neon_dotprod(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_neon<true, false>(a, p0, p1);
}

void gemm_q4_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx8_neon<true, 4>(a, p0, p1);
}
void gemm_q5_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx8_neon<true, 5>(a, p0, p1);
}
void gemm_q6_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx8_neon<true, 6>(a, p0, p1);
}

}  // namespace qllm::kernels
