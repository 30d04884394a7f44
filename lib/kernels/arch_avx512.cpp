// The AVX-512 (F/BW/VL/DQ) table: zmm int8 kernels; float ops are the AVX2 table's (8 lanes
// keep the canonical order, and this TU stays free of xsimd so its flags cannot leak into
// shared inline code).
#include "kernels/x86_avx512_qgemm.hpp"

namespace qllm::kernels {

extern const kernel_table table_avx2;

const kernel_table& table_avx512() {
  static const kernel_table t = [] {
    kernel_table k = table_avx2;
    k.name = "avx512";
    k.supported = [](const cpu_features& f) {
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
    };
    k.gemm_q4_0x8 = gemm_x16<false, true>;
    k.gemm_q8_0x8 = gemm_x16<false, false>;
    return k;
  }();
  return t;
}

}  // namespace qllm::kernels
