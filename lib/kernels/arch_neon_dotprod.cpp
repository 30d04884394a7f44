// The NEON + dotprod table: as neon, with vdotq_laneq_s32 as the int8 dot primitive.
#include "kernels/neon_qgemm.hpp"

namespace qllm::kernels {

extern const kernel_table table_neon;

const kernel_table& table_neon_dotprod() {
  static const kernel_table t = [] {
    kernel_table k = table_neon;
    k.name = "neon_dotprod";
    k.supported = [](const cpu_features& f) { return f.neon && f.dotprod; };
    k.gemm_q4_0x8 = gemm_neon<true, true>;
    k.gemm_q8_0x8 = gemm_neon<true, false>;
    return k;
  }();
  return t;
}

}  // namespace qllm::kernels
