// Chooses the kernel table once: the best one this CPU and OS can run, or QLLM_ISA. Built with
// the baseline flags: everything here runs before the CPU is known (arch_exports.hpp).
#include <cstdlib>
#include <string>

#include "kernels/arch_exports.hpp"
#include "qllm/error.hpp"

namespace qllm::kernels {

bool supported_scalar(const cpu_features&) noexcept { return true; }
bool supported_avx2(const cpu_features& f) noexcept { return f.avx2 && f.fma && f.f16c; }
bool supported_avx512(const cpu_features& f) noexcept {
  return supported_avx2(f) && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}
bool supported_avx512_vnni(const cpu_features& f) noexcept {
  return supported_avx512(f) && f.avx512_vnni;
}
bool supported_neon(const cpu_features& f) noexcept { return f.neon; }
bool supported_neon_dotprod(const cpu_features& f) noexcept { return f.neon && f.dotprod; }

namespace {
// A table that is `base` with other int8 kernels. Runs here, in baseline code: a struct copy
// made in an arch TU may use that TU's vector registers (vmovdqu64 zmm) before any CPU check.
[[maybe_unused]] kernel_table derive(const kernel_table& base, const char* name,
                                     bool (*supported)(const cpu_features&),
                                     decltype(kernel_table::gemm_q4_0x8) q4,
                                     decltype(kernel_table::gemm_q8_0x8) q8) {
  kernel_table k = base;
  k.name = name;
  k.supported = supported;
  k.gemm_q4_0x8 = q4;
  k.gemm_q8_0x8 = q8;
  return k;
}
// The same, with k-quant kernels of its own too.
[[maybe_unused]] kernel_table derive(const kernel_table& base, const char* name,
                                     bool (*supported)(const cpu_features&),
                                     decltype(kernel_table::gemm_q4_0x8) q4,
                                     decltype(kernel_table::gemm_q8_0x8) q8,
                                     decltype(kernel_table::gemm_q4_kx8) q4k,
                                     decltype(kernel_table::gemm_q5_kx8) q5k,
                                     decltype(kernel_table::gemm_q6_kx8) q6k) {
  kernel_table k = derive(base, name, supported, q4, q8);
  k.gemm_q4_kx8 = q4k;
  k.gemm_q5_kx8 = q5k;
  k.gemm_q6_kx8 = q6k;
  return k;
}
}  // namespace

const std::vector<const kernel_table*>& compiled_tables() {
#if QLLM_HAVE_AVX512
  static const kernel_table avx512_vnni =
      derive(table_avx2, "avx512_vnni", supported_avx512_vnni, gemm_q4_0x8_avx512_vnni,
             gemm_q8_0x8_avx512_vnni, gemm_q4_kx8_avx512_vnni, gemm_q5_kx8_avx512_vnni,
             gemm_q6_kx8_avx512_vnni);
  static const kernel_table avx512 =
      derive(table_avx2, "avx512", supported_avx512, gemm_q4_0x8_avx512, gemm_q8_0x8_avx512,
             gemm_q4_kx8_avx512, gemm_q5_kx8_avx512, gemm_q6_kx8_avx512);
#endif
#if QLLM_HAVE_NEON
  static const kernel_table neon_dotprod =
      derive(table_neon, "neon_dotprod", supported_neon_dotprod, gemm_q4_0x8_neon_dotprod,
             gemm_q8_0x8_neon_dotprod, gemm_q4_kx8_neon_dotprod, gemm_q5_kx8_neon_dotprod,
             gemm_q6_kx8_neon_dotprod);
#endif
  static const std::vector<const kernel_table*> all = [&] {
    std::vector<const kernel_table*> v;
#if QLLM_HAVE_AVX512
    v.push_back(&avx512_vnni);
    v.push_back(&avx512);
#endif
#if QLLM_HAVE_AVX2
    v.push_back(&table_avx2);
#endif
#if QLLM_HAVE_NEON
    v.push_back(&neon_dotprod);
    v.push_back(&table_neon);
#endif
    v.push_back(&table_scalar);
    return v;
  }();
  return all;
}

std::vector<const kernel_table*> runnable_tables() {
  std::vector<const kernel_table*> v;
  for (const kernel_table* t : compiled_tables())
    if (t->supported(cpu_features_detect())) v.push_back(t);
  return v;
}

const kernel_table* find_table(std::string_view name) {
  for (const kernel_table* t : compiled_tables())
    if (name == t->name) return t;
  return nullptr;
}

namespace {
const kernel_table& choose() {
  const char* env = std::getenv("QLLM_ISA");
  if (env && *env) {
    const kernel_table* t = find_table(env);
    std::string names;
    for (const kernel_table* c : compiled_tables()) names += std::string(" ") + c->name;
    if (!t)
      throw error(errc::unsupported,
                  std::string("QLLM_ISA=") + env + " is not a kernel table of this build (have:" +
                      names + ")");
    if (!t->supported(cpu_features_detect()))
      throw error(errc::unsupported, std::string("QLLM_ISA=") + env +
                                         " cannot run on this CPU (features: " +
                                         cpu_features_string(cpu_features_detect()) + ")");
    return *t;
  }
  return *runnable_tables().front();  // scalar is always runnable
}
}  // namespace

const kernel_table& active() {
  static const kernel_table& t = choose();
  return t;
}

namespace {
// BYTES from the environment variable `name` (0..65536, down to a multiple of 64), else `fallback`.
int prefetch_env(const char* name, int fallback) noexcept {
  if (const char* e = std::getenv(name); e && *e) {
    char* end = nullptr;
    const long b = std::strtol(e, &end, 10);
    if (*end == '\0' && b >= 0 && b <= 65536) return int(b) / 64 * 64;
  }
  return fallback;
}
}  // namespace

int q_prefetch_bytes() noexcept {
  static const int v = prefetch_env("QLLM_PREFETCH", default_prefetch_bytes(cpu_features_detect()));
  return v;
}

int step_prefetch_bytes() noexcept {
  static const int v = prefetch_env("QLLM_PREFETCH_STEP", 2048);
  return v;
}

int default_prefetch_bytes(const cpu_features& f) noexcept { return f.amd && f.family < 0x1au ? 0 : 8192; }

}  // namespace qllm::kernels
