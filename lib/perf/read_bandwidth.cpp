#include "perf/read_bandwidth.hpp"

#include <sys/mman.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>

#include "omp_compat.hpp"
#include "qllm/error.hpp"
#include "qllm/resources.hpp"

namespace qllm::perf {
namespace {

#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_slice_avx2(const uint64_t* p, std::size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (std::size_t i = 0; i < n; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return t[0] + t[1] + t[2] + t[3];
}
#endif

// n a multiple of 16 (one 128-byte line pair per step)
uint64_t sum_slice(const uint64_t* p, std::size_t n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return sum_slice_avx2(p, n);
#endif
  uint64_t a[16] = {};  // 16 independent sums: the compiler's vector registers (NEON, SSE2)
  for (std::size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j) a[j] += p[i + std::size_t(j)];
  uint64_t t = 0;
  for (uint64_t v : a) t += v;
  return t;
}

struct mapping {
  void* p = MAP_FAILED;
  std::size_t bytes = 0;
  ~mapping() {
    if (p != MAP_FAILED) munmap(p, bytes);
  }
};

}  // namespace

std::size_t probe_bytes(std::size_t request) noexcept {
  return std::max<std::size_t>(min_probe_bytes, std::min<uint64_t>(request, memory_available_bytes() / 8));
}

std::vector<double> best_read_bandwidth(std::span<const int> threads, std::size_t bytes, int passes) {
  if (passes < 1 || threads.empty())
    throw error(errc::invalid_argument, "read bandwidth: no thread count, or passes < 1");
  for (int t : threads)
    if (t < 1 || t > 1024)
      throw error(errc::invalid_argument, "read bandwidth: thread count " + std::to_string(t) + " is not 1..1024");
  bytes = std::max(bytes, min_probe_bytes) / 128 * 128;
  mapping m;
  m.bytes = bytes;
  m.p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m.p == MAP_FAILED)
    throw error(errc::out_of_memory, "read bandwidth: cannot map " + std::to_string(bytes >> 20) + " MiB");
  madvise(m.p, bytes, MADV_HUGEPAGE);  // a hint: without transparent huge pages, 4 KiB pages
  auto* a = static_cast<uint64_t*>(m.p);
  const std::size_t n = bytes / sizeof(uint64_t);
  const int toucher = *std::max_element(threads.begin(), threads.end());
#pragma omp parallel for schedule(static) num_threads(std::max(1, toucher))
  for (std::size_t i = 0; i < n; ++i) a[i] = i;
  const uint64_t expect = uint64_t(n / 2) * (n - 1);  // n is even

  std::vector<double> out;
  for (int nt : threads) {
    double best = 0;
    for (int pass = 0; pass < passes; ++pass) {
      uint64_t total = 0;
      const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
      {
        const std::size_t parts = std::size_t(omp_get_num_threads()), id = std::size_t(omp_get_thread_num());
        const std::size_t chunk = n / parts & ~std::size_t(15);
        const std::size_t lo = id * chunk, len = id + 1 == parts ? n - lo : chunk;
        total += sum_slice(a + lo, len & ~std::size_t(15));
        for (std::size_t i = lo + (len & ~std::size_t(15)); i < lo + len; ++i) total += a[i];
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (total != expect) throw error(errc::internal, "read bandwidth: the probe summed wrong");
      if (s > 0) best = std::max(best, double(bytes) / s / 1e9);
    }
    out.push_back(best);
  }
  return out;
}

}  // namespace qllm::perf
