// The AVX-512 VNNI int8 kernels: as avx512, with vpdpbusd as the int8 dot primitive. Exports
// functions only (arch_exports.hpp); dispatch.cpp assembles the table.
#include "kernels/arch_exports.hpp"
#include "kernels/x86_avx512_kquant.hpp"
#include "kernels/x86_avx512_qgemm.hpp"

namespace qllm::kernels {

void gemm_q4_0x8_avx512_vnni(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_x16<true, true>(a, p0, p1);
}
void gemm_q8_0x8_avx512_vnni(const qgemm_args& a, int64_t p0, int64_t p1) {
  gemm_x16<true, false>(a, p0, p1);
}

void gemm_q4_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<true, 4>(a, p0, p1);
}
void gemm_q5_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<true, 5>(a, p0, p1);
}
void gemm_q6_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1) {
  gemm_kx16<true, 6>(a, p0, p1);
}

}  // namespace qllm::kernels
