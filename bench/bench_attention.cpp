// Causal attention over the KV cache on Llama-2-7B shapes (32 heads of 128, f16 cache): a batch
// of prompt tokens (M = 256) at growing depth, and one decoding token. Counters: query tokens per
// second, and the K/V bytes a naive pass reads per second (a measure of cache reuse: above the
// machine's memory bandwidth means rows are served from cache).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "ops/rows.hpp"
#include "qllm/formats.hpp"

using namespace qllm;

namespace {

void bm_attention(benchmark::State& st, int64_t m, int64_t depth, int nt, bool head_major) {
  const int64_t n_head = 32, n_head_kv = 32, hd = 128, kv_dim = n_head_kv * hd, n_ctx = depth + m;
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<uint16_t> k(static_cast<std::size_t>(n_ctx * kv_dim)), v(k.size());
  for (auto& x : k) x = fp32_to_fp16(g(rng));
  for (auto& x : v) x = fp32_to_fp16(g(rng));
  std::vector<float> q(static_cast<std::size_t>(m * n_head * hd)), out(q.size());
  for (auto& x : q) x = g(rng);
  std::vector<float> scratch(ops::attention_scratch_floats(nt, n_ctx));
  const auto& kt = kernels::active();
  // the model's layout (head-major) or the row-major one ([n_ctx][kv_dim]) for comparison
  const int64_t ld = head_major ? hd : kv_dim, head_stride = head_major ? n_ctx * hd : hd;
  const ops::attention_args a{q.data(), k.data(), v.data(), true, ld, head_stride, depth, m, n_head, n_head_kv, hd,
                              out.data(), scratch.data(), n_ctx};
  for (auto _ : st) {
    ops::attention(kt, a, nt);
    benchmark::DoNotOptimize(out.data());
  }
  // rows each query token reads: depth + its index + 1, K and V, f16
  const double rows = double(m) * double(depth) + double(m) * double(m + 1) / 2;
  const double bytes = rows * double(kv_dim) * 2 * 2;
  st.counters["tok/s"] = benchmark::Counter(double(m), benchmark::Counter::kIsIterationInvariantRate);
  st.counters["KV_GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const bool quick = std::getenv("QLLM_BENCH_QUICK") != nullptr;
  for (int64_t depth : {int64_t(0), int64_t(1024), int64_t(3840)}) {
    for (int64_t m : {int64_t(1), int64_t(256)}) {
      if (m == 1 && depth == 0) continue;
      for (bool head_major : {false, true}) {
        for (int nt : {1, 2}) {
          const std::string name = std::string(head_major ? "head-major" : "row-major") + "/M" + std::to_string(m) +
                                   "/depth" + std::to_string(depth) + "/t" + std::to_string(nt);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_attention, m, depth, nt, head_major);
          b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(quick ? 0.1 : 0.5);
        }
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
