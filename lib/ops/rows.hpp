// Per-token operations over [m][n] activations, split over OpenMP threads by token.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/kernel_table.hpp"

namespace qllm::ops {

// out[t] = rmsnorm(x[t]) * w for t < m (rows of n, contiguous).
void rmsnorm_rows(const kernels::kernel_table& kt, float* out, const float* x, const float* w,
                  int64_t m, int64_t n, float eps, int n_threads);
// x[t] rotated for position pos0 + t; x rows have stride ld and hold n_head heads of head_dim.
// cos_dup / sin_alt: per-position tables ([position][head_dim], see ref::rope_table).
void rope_rows(const kernels::kernel_table& kt, float* x, int64_t m, int64_t ld, int64_t n_head,
               int64_t head_dim, const float* cos_dup, const float* sin_alt, int64_t pos0,
               int n_threads);
// Element-wise over m*n values, split in contiguous chunks.
void add_inplace(const kernels::kernel_table& kt, float* x, const float* y, int64_t count,
                 int n_threads);
void silu_mul(const kernels::kernel_table& kt, float* out, const float* gate, const float* up,
              int64_t count, int n_threads);

// Causal grouped-query attention for m tokens at positions pos0 .. pos0+m-1 over a KV cache
// whose rows 0 .. pos0+m-1 are filled. q and out: [m][n_head * head_dim]. k, v: f16 (kv_f16) or
// f32; row r of kv head h starts at element h * head_stride + r * ld (the model's cache is
// head-major: ld = head_dim, head_stride = n_ctx * head_dim, so one head's rows are contiguous).
// scratch: attention_scratch_floats(n_threads, n_ctx) floats.
struct attention_args {
  const float* q;
  const void* k;
  const void* v;
  bool kv_f16;
  int64_t ld, head_stride;
  int64_t pos0, m;
  int64_t n_head, n_head_kv, head_dim;
  float* out;
  float* scratch;
  int64_t n_ctx;
};
void attention(const kernels::kernel_table& kt, const attention_args& a, int n_threads);
// Several sequences' attention (each over its own cache) in one parallel region; the args share
// one scratch (attention_scratch_floats(n_threads, n_ctx), n_ctx the largest). Results are those
// of one call per sequence, bit for bit.
void attention(const kernels::kernel_table& kt, std::span<const attention_args> seqs, int n_threads);
// Query tokens of one head handled together, so each block of cache rows is read from memory once
// per group instead of once per token.
inline constexpr int64_t attention_query_block = 8;
inline std::size_t attention_scratch_floats(int n_threads, int64_t n_ctx) {
  return std::size_t(n_threads) * std::size_t(attention_query_block) * std::size_t(n_ctx);
}

}  // namespace qllm::ops

namespace qllm::ops {
// The thread count to use when the caller says 0: OpenMP's default (OMP_NUM_THREADS or cores).
int default_threads() noexcept;
}  // namespace qllm::ops
