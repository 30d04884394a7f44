// Kernel benchmarks on Llama-2-7B shapes, printed as fractions of this machine's measured memory
// read bandwidth (GEMV, M = 1) and practical int8 peak (GEMM, M = 512), both measured in the same
// run so that a noisy shared machine still gives meaningful ratios.
#include <benchmark/benchmark.h>
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
#include <string_view>
#include <vector>

#include "omp_compat.hpp"
#include "ops/matmul.hpp"
#include "perf/read_bandwidth.hpp"
#include "convert/encode.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/reference.hpp"

using namespace qllm;

namespace {

std::map<int, double> g_bw;    // best read bandwidth GB/s by thread count
std::map<int, double> g_peak;  // int8 GOP/s by thread count

#if defined(__x86_64__)
// Register-only loops of the GEMMs' int8 instructions, 2 ops (multiply + add) per int8 product.
// The peak (sign_step false): unsigned x signed maddubs + 16-bit adds, one madd per eight, the
// Q4_0 / k-quant step. sign_step: the signed x signed step of the Q8_0 GEMM, |w| (shared by the
// tokens) x sign(x, w), then madd and a 32-bit add per maddubs. Four tokens with distinct
// activations and two weight registers made opaque after every step (the sums with them, so
// products are added as they come): the compiler can neither share products between tokens nor
// hoist them, and each iteration executes the 32 maddubs it counts. Every thread counts its own
// iterations (a team smaller than asked is counted as it ran).
template <bool sign_step>
__attribute__((target("avx2,fma"))) double measure_int8_loop(int nt) {
  const int64_t iters = 25'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    int sink = 0;
    int64_t done = 0;
#pragma omp parallel num_threads(nt) reduction(+ : sink, done)
    {
      __m256i w0 = _mm256_set1_epi8(char(1 + omp_get_thread_num())), w1 = _mm256_set1_epi8(-2);
      __m256i x[4], s[4], acc[4];
      for (int t = 0; t < 4; ++t) {
        x[t] = _mm256_set1_epi8(char(3 + t));
        acc[t] = _mm256_setzero_si256();
      }
      const __m256i ones = _mm256_set1_epi16(1);
      const int64_t n = iters / omp_get_num_threads();
      for (int64_t i = 0; i < n; ++i) {
        for (int t = 0; t < 4; ++t) s[t] = _mm256_setzero_si256();
        for (int h = 0; h < 4; ++h) {  // 4 x (4 tokens x 2 maddubs)
          if constexpr (sign_step) {
            const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
            for (int t = 0; t < 4; ++t)
              s[t] = _mm256_add_epi32(s[t], _mm256_add_epi32(
                  _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(x[t], w0)), ones),
                  _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(x[t], w1)), ones)));
          } else {
            for (int t = 0; t < 4; ++t)
              s[t] = _mm256_add_epi16(s[t], _mm256_add_epi16(_mm256_maddubs_epi16(w0, x[t]), _mm256_maddubs_epi16(w1, x[t])));
          }
          __asm__ volatile("" : "+x"(w0), "+x"(w1), "+x"(s[0]), "+x"(s[1]), "+x"(s[2]), "+x"(s[3]));
        }
        for (int t = 0; t < 4; ++t)
          acc[t] = _mm256_add_epi32(acc[t], sign_step ? s[t] : _mm256_madd_epi16(s[t], ones));
      }
      for (int t = 0; t < 4; ++t) sink += _mm256_extract_epi32(acc[t], 0);
      done += n;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(sink);
    best = std::max(best, double(done) * 4 * 8 * 32 * 2 / s / 1e9);
  }
  return best;
}
double measure_int8_peak(int nt) { return measure_int8_loop<false>(nt); }
double measure_q8_sign_step(int nt) { return measure_int8_loop<true>(nt); }

// The AVX-512 VNNI peak: 12 independent chains of vpdpbusd (zmm, 64 products each) per thread,
// enough to cover its latency on the cores measured (4 cycles on Zen 5, 2 per cycle: 8 chains
// reach the peak); weights and activations made opaque every round. Only where the CPU has it.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) double measure_vnni_loop(int nt) {
  const int64_t iters = 4'000'000;  // rounds of 12 per thread
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t sink = 0;
    int64_t done = 0;
#pragma omp parallel num_threads(nt) reduction(+ : sink, done)
    {
      __m512i w = _mm512_set1_epi8(char(1 + omp_get_thread_num())), x = _mm512_set1_epi8(-3);
      __m512i s[12];
      for (int c = 0; c < 12; ++c) s[c] = _mm512_set1_epi32(c);
      for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
        for (int c = 0; c < 12; ++c) s[c] = _mm512_dpbusd_epi32(s[c], w, x);
        __asm__ volatile("" : "+v"(w), "+v"(x));
      }
      alignas(64) int32_t lanes[16];  // through memory: gcc 12 warns on its own 512-bit reductions
      for (int c = 0; c < 12; ++c) {
        _mm512_store_si512(lanes, s[c]);
        sink += lanes[0];
      }
      done += iters;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(sink);
    best = std::max(best, double(done) * 12 * 64 * 2 / s / 1e9);
  }
  return best;
}
double measure_vnni_peak(int nt) { return __builtin_cpu_supports("avx512vnni") ? measure_vnni_loop(nt) : 0.0; }
#else
double measure_int8_peak(int) { return 0.0; }  // no peak loop for this arch yet: peak_frac reads inf
double measure_q8_sign_step(int) { return 0.0; }
double measure_vnni_peak(int) { return 0.0; }
#endif

struct shape {
  int64_t n, k;
};

// Several copies of the matrix, cycled through, so that a GEMV streams from memory, not L3; or,
// `resident`, one small copy read again and again from the caches: the loop's own speed, the
// rate the bus would have to beat before it is the limit.
struct fixture {
  std::vector<std::unique_ptr<ops::packed_weights>> w;
};

// Weight matrices are made once per (type, shape) and reused by every benchmark of that shape.
fixture& weights(ggml_type type, shape s, bool resident) {
  static std::map<std::string, fixture> cache;
  const std::string key = std::to_string(int(type)) + ":" + std::to_string(s.n) + "x" + std::to_string(s.k) +
                          (resident ? ":resident" : "");
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
  const std::size_t copies =
      resident ? 1 : std::max<std::size_t>(2, (std::size_t(768) << 20) / raw.size() + 1);
  for (std::size_t c = 0; c < copies; ++c)
    f.w.push_back(std::make_unique<ops::packed_weights>(type, raw.data(), s.n, s.k, 2));
  return f;
}

void bm_matmul(benchmark::State& st, ggml_type type, shape s, int64_t m, int nt, bool resident) {
  const auto& kt = kernels::active();
  fixture& f = weights(type, s, resident);
  std::vector<float> x(static_cast<size_t>(m * s.k));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 61) - 30) * 0.03f;
  ops::act_q8 xq(m, s.k, ops::packed_weights::k_quant(type));
  std::vector<float> y(static_cast<size_t>(m * s.n));
  std::size_t c = 0;
  if (resident) ops::quantize_activations(kt, x.data(), m, xq, nt);  // the loop alone
  for (auto _ : st) {
    if (!resident) ops::quantize_activations(kt, x.data(), m, xq, nt);
    ops::matmul(kt, *f.w[c], x.data(), &xq, m, y.data(), s.n, nt);
    c = (c + 1) % f.w.size();
    benchmark::ClobberMemory();
  }
  if (m == 1) {
    const double gbs = double(f.w[0]->bytes()) * double(st.iterations());
    st.counters["GB/s"] = benchmark::Counter(gbs / 1e9, benchmark::Counter::kIsRate);
    if (const auto bw = g_bw.find(nt); !resident && bw != g_bw.end() && bw->second > 0)
      st.counters["bw_frac"] = benchmark::Counter(gbs / 1e9 / bw->second, benchmark::Counter::kIsRate);
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
    if (t > omp_get_thread_limit()) {  // each result would be labelled with more threads than it had
      std::fprintf(stderr, "bench_kernels: %d threads, but a parallel region here gets at most %d (OMP_THREAD_LIMIT)\n", t,
                   omp_get_thread_limit());
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
  // the roofline: perf::best_read_bandwidth, the probe `qllm bench` prints as well (2 GiB, best of
  // 10; at most an eighth of the memory this process may have). Where it cannot run (no room for
  // its buffer), the GEMVs report GB/s without bw_frac.
  const std::size_t bw_bytes = perf::probe_bytes(std::size_t(2) << 30);
  std::vector<double> bw;
  try {
    bw = perf::best_read_bandwidth(threads, bw_bytes, 10);
  } catch (const qllm::error& e) {
    std::printf("read bandwidth not measured: %s\n", e.what());
  }
  // the VNNI peak where the table in use has vpdpbusd (QLLM_ISA=avx2 on the same CPU: maddubs)
  const bool vnni_table = std::string_view(kernels::active().name).find("vnni") != std::string_view::npos;
  for (std::size_t i = 0; i < threads.size(); ++i) {
    const int nt = threads[i];
    const double maddubs = measure_int8_peak(nt), q8_step = measure_q8_sign_step(nt);
    const double vnni = vnni_table ? measure_vnni_peak(nt) : 0.0;
    g_peak[nt] = vnni > 0 ? vnni : maddubs;  // peak_frac: against the primitive the GEMMs use
    char peaks[160];
    std::snprintf(peaks, sizeof peaks, "int8 peak %.0f GOP/s (Q8_0 signed step %.0f)", maddubs, q8_step);
    if (vnni > 0)
      std::snprintf(peaks, sizeof peaks, "int8 peak %.0f GOP/s (vpdpbusd zmm; maddubs ymm %.0f, Q8_0 signed step %.0f)",
                    vnni, maddubs, q8_step);
    if (!bw.empty()) {
      g_bw[nt] = bw[i];
      std::printf("machine, %d thread(s): read bandwidth %.1f GB/s (huge pages, best of 10, %zu MiB), %s\n", nt,
                  g_bw[nt], bw_bytes >> 20, peaks);
    } else {
      std::printf("machine, %d thread(s): %s\n", nt, peaks);
    }
  }
  const shape shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {32000, 4096}};
  // the k-quants beside Q4_0 / Q8_0 on the same shapes (Q4_K: 4.625 bits per weight as repacked,
  // Q4_0 4.5; Q5_K 5.625; Q6_K 6.5625; Q8_0 8.5)
  for (ggml_type type : {ggml_type::q4_0, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k, ggml_type::q8_0}) {
    for (shape s : shapes) {
      // M = 8: one step of 8 decoding streams (continuous batching); M = 64: a short prompt;
      // M = 512: a long prompt
      for (int64_t m : {int64_t(1), int64_t(8), int64_t(64), int64_t(512)}) {
        if (quick && m > 1 && s.n != 4096) continue;
        for (int nt : threads) {
          const std::string name = std::string(gguf::type_name(type)) + "/" +
                                   std::to_string(s.n) + "x" + std::to_string(s.k) + "/M" +
                                   std::to_string(m) + "/t" + std::to_string(nt);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_matmul, type, s, m, nt, false);
          b->Unit(benchmark::kMillisecond)->UseRealTime();
          if (m == 512) b->Iterations(quick ? 1 : 2);
          else b->MinTime(quick ? 0.2 : m > 1 ? 0.5 : 1.0);
        }
      }
    }
    // the GEMV loop of one core from the caches (256 rows: 0.6-1.1 MiB, L2 or L3; activations
    // quantized once, outside the timing): GB/s without bw_frac; and the step of 8 streams from
    // the caches, against the same step streamed from memory above (M8/t1)
    for (int64_t m : {int64_t(1), int64_t(8)}) {
      const std::string name = std::string(gguf::type_name(type)) + "/256x4096/M" + std::to_string(m) + "/t1/resident";
      auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_matmul, type, shape{256, 4096}, m, 1, true);
      b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(quick ? 0.2 : m > 1 ? 0.5 : 1.0);
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
