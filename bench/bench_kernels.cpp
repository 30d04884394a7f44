// Kernel benchmarks on Llama-2-7B shapes, printed as fractions of this machine's measured memory
// read bandwidth (GEMV, M = 1) and practical int8 peak (GEMM, M = 512), both measured in the same
// run so that a noisy shared machine still gives meaningful ratios.
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "omp_compat.hpp"
#include "ops/matmul.hpp"
#include "convert/encode.hpp"
#include "qllm/gguf.hpp"
#include "qllm/reference.hpp"

using namespace qllm;

namespace {

std::map<int, double> g_bw;    // best read bandwidth GB/s by thread count
std::map<int, double> g_peak;  // int8 GOP/s by thread count

// The best read bandwidth this machine gives, measured the way ../shared/tools/membw does: 2 GiB
// of anonymous memory (far beyond any cache) on transparent huge pages, every page touched before
// timing, each thread summing its own contiguous slice with four independent accumulators, best
// of 10 passes. A weaker probe (4 KiB pages, one accumulator, few passes) reads low and would make
// the kernels look closer to the roofline than they are.
struct bw_buffer {
  uint64_t* p = nullptr;
  std::size_t n = 0;
  bw_buffer() {
    const std::size_t bytes = std::size_t(2) << 30;
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("bench_kernels: mmap");
      std::exit(1);
    }
    madvise(m, bytes, MADV_HUGEPAGE);
    p = static_cast<uint64_t*>(m);
    n = bytes / sizeof(uint64_t);
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) p[i] = i;
  }
};

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

uint64_t sum_slice(const uint64_t* p, std::size_t n) {  // n a multiple of 16
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return sum_slice_avx2(p, n);
#endif
  uint64_t a[16] = {};
  for (std::size_t i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j) a[j] += p[i + std::size_t(j)];
  uint64_t t = 0;
  for (uint64_t v : a) t += v;
  return t;
}

double measure_bandwidth(int nt) {
  static bw_buffer buf;
  const std::size_t n = buf.n;
  const uint64_t expect = uint64_t(n / 2) * (n - 1);
  double best = 0;
  for (int rep = 0; rep < 10; ++rep) {
    uint64_t total = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
      const std::size_t parts = std::size_t(omp_get_num_threads()), id = std::size_t(omp_get_thread_num());
      const std::size_t chunk = n / parts & ~std::size_t(15);
      const std::size_t lo = id * chunk, len = id + 1 == parts ? n - lo : chunk;
      total += sum_slice(buf.p + lo, len & ~std::size_t(15));
      for (std::size_t i = lo + (len & ~std::size_t(15)); i < lo + len; ++i) total += buf.p[i];
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (total != expect) {
      std::fprintf(stderr, "bench_kernels: bandwidth probe summed wrong\n");
      std::exit(1);
    }
    best = std::max(best, double(n * sizeof(uint64_t)) / s / 1e9);
  }
  return best;
}

#if defined(__x86_64__)
// Register-only loop of the GEMM's int8 instructions (maddubs + 16-bit adds, one madd per eight):
// 2 ops (multiply + add) per int8 product.
__attribute__((target("avx2,fma"))) double measure_int8_peak(int nt) {
  const int64_t iters = 50'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    int sink = 0;
#pragma omp parallel num_threads(nt) reduction(+ : sink)
    {
      __m256i w[8], acc[4];
      for (int j = 0; j < 8; ++j) w[j] = _mm256_set1_epi8(char(j + omp_get_thread_num()));
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_setzero_si256();
      const __m256i x = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
      for (int64_t i = 0; i < iters / nt; ++i) {
        for (int t = 0; t < 4; ++t) {  // 4 tokens x 8 maddubs, as the 4-token tile
          __m256i s = _mm256_maddubs_epi16(w[0], x);
          for (int j = 1; j < 8; ++j) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[j], x));
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s, ones));
        }
        for (auto& v : w) __asm__ volatile("" : "+x"(v));  // keep every product in the loop
      }
      for (int j = 0; j < 4; ++j) sink += _mm256_extract_epi32(acc[j], 0);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(sink);
    best = std::max(best, double(iters) * 4 * 8 * 32 * 2 / s / 1e9);
  }
  return best;
}
#else
double measure_int8_peak(int) { return 0.0; }  // no peak loop for this arch yet: peak_frac reads inf
#endif

struct shape {
  int64_t n, k;
};

// Several copies of the matrix, cycled through, so that a GEMV streams from memory, not L3.
struct fixture {
  std::vector<std::unique_ptr<ops::packed_weights>> w;
};

// Weight matrices are made once per (type, shape) and reused by every benchmark of that shape.
fixture& weights(ggml_type type, shape s) {
  static std::map<std::string, fixture> cache;
  const std::string key = std::to_string(int(type)) + ":" + std::to_string(s.n) + "x" + std::to_string(s.k);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cache.clear();  // keep one shape resident
  fixture& f = cache[key];
  const std::size_t rb = encoded_row_bytes(type, s.k);
  std::vector<uint8_t> raw(rb * std::size_t(s.n));
  std::vector<float> row(static_cast<size_t>(s.k));
  uint32_t seed = 1;
  for (int64_t r = 0; r < s.n; ++r) {
    for (auto& v : row) v = float(int32_t(seed = seed * 1664525u + 1013904223u)) * 4.6e-10f;
    encode_row(type, row.data(), s.k, raw.data() + std::size_t(r) * rb);
  }
  const std::size_t copies = std::max<std::size_t>(2, (std::size_t(768) << 20) / raw.size() + 1);
  for (std::size_t c = 0; c < copies; ++c)
    f.w.push_back(std::make_unique<ops::packed_weights>(type, raw.data(), s.n, s.k, 2));
  return f;
}

void bm_matmul(benchmark::State& st, ggml_type type, shape s, int64_t m, int nt) {
  const auto& kt = kernels::active();
  fixture& f = weights(type, s);
  std::vector<float> x(static_cast<size_t>(m * s.k));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 61) - 30) * 0.03f;
  ops::act_q8 xq(m, s.k, ops::packed_weights::k_quant(type));
  std::vector<float> y(static_cast<size_t>(m * s.n));
  std::size_t c = 0;
  for (auto _ : st) {
    ops::quantize_activations(kt, x.data(), m, xq, nt);
    ops::matmul(kt, *f.w[c], x.data(), &xq, m, y.data(), s.n, nt);
    c = (c + 1) % f.w.size();
    benchmark::ClobberMemory();
  }
  if (m == 1) {
    const double gbs = double(f.w[0]->bytes()) * double(st.iterations());
    st.counters["GB/s"] = benchmark::Counter(gbs / 1e9, benchmark::Counter::kIsRate);
    st.counters["bw_frac"] = benchmark::Counter(gbs / 1e9 / g_bw[nt], benchmark::Counter::kIsRate);
  } else {
    const double ops = 2.0 * double(s.n) * double(s.k) * double(m) * double(st.iterations());
    st.counters["GOP/s"] = benchmark::Counter(ops / 1e9, benchmark::Counter::kIsRate);
    st.counters["peak_frac"] = benchmark::Counter(ops / 1e9 / g_peak[nt], benchmark::Counter::kIsRate);
  }
  st.SetLabel(kt.name);
}

// QLLM_BENCH_THREADS=1,2,4,8,16 (default 1,2): the thread counts to run and measure.
std::vector<int> bench_threads() {
  std::vector<int> v;
  const char* e = std::getenv("QLLM_BENCH_THREADS");
  std::string s = e && *e ? e : "1,2";
  for (std::size_t i = 0; i < s.size();) {
    std::size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const int t = std::atoi(s.substr(i, j - i).c_str());
    if (t < 1 || t > 1024) {
      std::fprintf(stderr, "bench_kernels: QLLM_BENCH_THREADS '%s': thread counts must be 1..1024\n", s.c_str());
      std::exit(2);
    }
    v.push_back(t);
    i = j + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const bool quick = std::getenv("QLLM_BENCH_QUICK") != nullptr;
  const std::vector<int> threads = bench_threads();
  for (int nt : threads) {
    g_bw[nt] = measure_bandwidth(nt);
    g_peak[nt] = measure_int8_peak(nt);
    std::printf("machine, %d thread(s): read bandwidth %.1f GB/s (huge pages, best of 10), int8 peak %.0f GOP/s\n",
                nt, g_bw[nt], g_peak[nt]);
  }
  const shape shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {32000, 4096}};
  // the k-quants beside Q4_0 / Q8_0 on the same shapes (Q4_K: 4.625 bits per weight as repacked,
  // Q4_0 4.5; Q5_K 5.625; Q6_K 6.5625; Q8_0 8.5)
  for (ggml_type type : {ggml_type::q4_0, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k, ggml_type::q8_0}) {
    for (shape s : shapes) {
      for (int64_t m : {int64_t(1), int64_t(512)}) {
        if (quick && m == 512 && s.n != 4096) continue;
        for (int nt : threads) {
          const std::string name = std::string(gguf::type_name(type)) + "/" +
                                   std::to_string(s.n) + "x" + std::to_string(s.k) + "/M" +
                                   std::to_string(m) + "/t" + std::to_string(nt);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_matmul, type, s, m, nt);
          b->Unit(benchmark::kMillisecond)->UseRealTime();
          if (m == 512) b->Iterations(quick ? 1 : 2);
          else b->MinTime(quick ? 0.2 : 1.0);
        }
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
