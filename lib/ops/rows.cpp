#include "ops/rows.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qllm::ops {

namespace {
constexpr int64_t elementwise_chunk = 16384;  // floats per work item: keeps thread start-up cheap
}

void rmsnorm_rows(const kernels::kernel_table& kt, float* out, const float* x, const float* w,
                  int64_t m, int64_t n, float eps, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads)) if (m > 1)
  for (int64_t t = 0; t < m; ++t) kt.rmsnorm(out + t * n, x + t * n, w, n, eps);
}

void rope_rows(const kernels::kernel_table& kt, float* x, int64_t m, int64_t ld, int64_t n_head,
               int64_t head_dim, const float* cos_dup, const float* sin_alt, int64_t pos0,
               int n_threads) {
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads)) if (m > 1)
  for (int64_t t = 0; t < m; ++t)
    kt.rope(x + t * ld, n_head, head_dim, cos_dup + (pos0 + t) * head_dim,
            sin_alt + (pos0 + t) * head_dim);
}

void add_inplace(const kernels::kernel_table& kt, float* x, const float* y, int64_t count,
                 int n_threads) {
  const int64_t chunks = (count + elementwise_chunk - 1) / elementwise_chunk;
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads)) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i = c * elementwise_chunk, n = std::min(elementwise_chunk, count - i);
    kt.add(x + i, x + i, y + i, n);
  }
}

void silu_mul(const kernels::kernel_table& kt, float* out, const float* gate, const float* up,
              int64_t count, int n_threads) {
  const int64_t chunks = (count + elementwise_chunk - 1) / elementwise_chunk;
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads)) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i = c * elementwise_chunk, n = std::min(elementwise_chunk, count - i);
    kt.silu_mul(out + i, gate + i, up + i, n);
  }
}

void attention(const kernels::kernel_table& kt, const attention_args& a, int n_threads) {
  const int nt = std::max(1, n_threads);
  const int64_t group = a.n_head / a.n_head_kv;
  const int64_t q_dim = a.n_head * a.head_dim;
  const float scale = 1.0f / std::sqrt(float(a.head_dim));
  const int64_t items = a.m * a.n_head;
  // head-major items: consecutive items (on all threads) read the same head's rows while they
  // are in cache
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t h = it / a.m, t = it % a.m;
    const int64_t kvh = h / group;
    const int64_t n_keys = a.pos0 + t + 1;  // causal: keys up to this token's position
    float* scores = a.scratch + int64_t(omp_get_thread_num()) * a.n_ctx;
    const float* q = a.q + t * q_dim + h * a.head_dim;
    float* out = a.out + t * q_dim + h * a.head_dim;
    if (a.kv_f16)
      kt.attn_scores_f16(static_cast<const uint16_t*>(a.k) + kvh * a.head_stride, a.ld, n_keys, q, a.head_dim,
                         scale, scores);
    else
      kt.attn_scores_f32(static_cast<const float*>(a.k) + kvh * a.head_stride, a.ld, n_keys, q, a.head_dim,
                         scale, scores);
    kt.softmax(scores, n_keys);
    std::memset(out, 0, size_t(a.head_dim) * sizeof(float));
    if (a.kv_f16)
      kt.attn_values_f16(out, scores, static_cast<const uint16_t*>(a.v) + kvh * a.head_stride, a.ld, n_keys,
                         a.head_dim);
    else
      kt.attn_values_f32(out, scores, static_cast<const float*>(a.v) + kvh * a.head_stride, a.ld, n_keys,
                         a.head_dim);
  }
}

}  // namespace qllm::ops

namespace qllm::ops {
int default_threads() noexcept { return std::max(1, omp_get_max_threads()); }
}  // namespace qllm::ops
