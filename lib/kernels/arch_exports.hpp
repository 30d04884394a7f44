// What the per-arch translation units export, and the ISA predicates they point to.
//
// The rule that keeps one binary safe on every CPU: no code compiled with ISA flags runs before
// dispatch.cpp has checked that the CPU can run it. So an arch TU (built with -mavx2, -mavx512*,
// -march=armv8.2-a+dotprod ...) exports only
//   - kernel functions, named <what>_<isa>, and
//   - `constinit` tables whose every field is a constant (function addresses, a name literal):
//     no constructor, no function-local static, no copy made by code of that TU.
// Tables that extend another table (avx512 = avx2 + zmm int8 kernels) are assembled by
// dispatch.cpp, which is built with the baseline flags, and the predicates below live there too.
// tests/check_isa_objects.py enforces the rule on the built objects: every global symbol of an
// arch library ends in its ISA suffix, none is weak (a weak symbol can be merged by the linker
// with a baseline copy and then run on any CPU), and no object has static constructors.
#pragma once
#include "kernels/kernel_table.hpp"

namespace qllm::kernels {

// ISA predicates (dispatch.cpp, baseline flags).
bool supported_scalar(const cpu_features& f) noexcept;
bool supported_avx2(const cpu_features& f) noexcept;
bool supported_avx512(const cpu_features& f) noexcept;
bool supported_avx512_vnni(const cpu_features& f) noexcept;
bool supported_neon(const cpu_features& f) noexcept;
bool supported_neon_dotprod(const cpu_features& f) noexcept;

// Complete tables, constant-initialized in their arch TU.
extern const kernel_table table_scalar;
extern const kernel_table table_avx2;
extern const kernel_table table_neon;

// The int8 kernels of the tables that dispatch.cpp derives from another one.
void gemm_q4_0x8_avx512(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q8_0x8_avx512(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q4_0x8_avx512_vnni(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q8_0x8_avx512_vnni(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q4_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q5_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q6_kx8_avx512(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q4_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q5_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q6_kx8_avx512_vnni(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q4_0x8_neon_dotprod(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q8_0x8_neon_dotprod(const qgemm_args& a, int64_t p0, int64_t p1);
void gemm_q4_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q5_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1);
void gemm_q6_kx8_neon_dotprod(const kgemm_args& a, int64_t p0, int64_t p1);

}  // namespace qllm::kernels
