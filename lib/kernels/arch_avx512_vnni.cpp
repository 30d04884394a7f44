// The AVX-512 VNNI table: as avx512, with vpdpbusd as the int8 dot primitive.
#include "kernels/x86_avx512_qgemm.hpp"

namespace qllm::kernels {

extern const kernel_table table_avx2;

const kernel_table& table_avx512_vnni() {
  static const kernel_table t = [] {
    kernel_table k = table_avx2;
    k.name = "avx512_vnni";
    k.supported = [](const cpu_features& f) {
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_vnni && f.fma &&
             f.f16c;
    };
    k.gemm_q4_0x8 = gemm_x16<true, true>;
    k.gemm_q8_0x8 = gemm_x16<true, false>;
    return k;
  }();
  return t;
}

}  // namespace qllm::kernels
