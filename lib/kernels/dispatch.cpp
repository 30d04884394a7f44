// Chooses the kernel table once: the best one this CPU and OS can run, or QLLM_ISA.
#include <cstdlib>
#include <string>

#include "kernels/kernel_table.hpp"
#include "qllm/error.hpp"

namespace qllm::kernels {

extern const kernel_table table_scalar;
#if QLLM_HAVE_AVX2
extern const kernel_table table_avx2;
#endif
#if QLLM_HAVE_AVX512
const kernel_table& table_avx512();
const kernel_table& table_avx512_vnni();
#endif
#if QLLM_HAVE_NEON
extern const kernel_table table_neon;
const kernel_table& table_neon_dotprod();
#endif

const std::vector<const kernel_table*>& compiled_tables() {
  static const std::vector<const kernel_table*> all = [] {
    std::vector<const kernel_table*> v;
#if QLLM_HAVE_AVX512
    v.push_back(&table_avx512_vnni());
    v.push_back(&table_avx512());
#endif
#if QLLM_HAVE_AVX2
    v.push_back(&table_avx2);
#endif
#if QLLM_HAVE_NEON
    v.push_back(&table_neon_dotprod());
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

}  // namespace qllm::kernels
