#include "omp_compat.hpp"
#include "ops/rows.hpp"
#include "qllm/resources.hpp"


#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <vector>

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

namespace {
// One work item of attention: query block t0 (up to attention_query_block tokens) of head h.
void attention_item(const kernels::kernel_table& kt, const attention_args& a, int64_t h, int64_t t0,
                    float* scratch) {
  constexpr int64_t qb = attention_query_block;
  const int64_t group = a.n_head / a.n_head_kv;
  const int64_t q_dim = a.n_head * a.head_dim;
  const float scale = 1.0f / std::sqrt(float(a.head_dim));
  const int64_t row_chunk = a.head_dim <= 128 ? 32 : 16;  // 8 KiB of f16 rows: L1-resident for the block
  const auto elt = a.kv_f16 ? sizeof(uint16_t) : sizeof(float);
  const int64_t tq = std::min(qb, a.m - t0);
  const int64_t kvh = h / group;
  const auto* kh = static_cast<const uint8_t*>(a.k) + std::size_t(kvh * a.head_stride) * elt;
  const auto* vh = static_cast<const uint8_t*>(a.v) + std::size_t(kvh * a.head_stride) * elt;
  float* scores = scratch;  // [qb][n_ctx]
  const int64_t last_keys = a.pos0 + t0 + tq;  // keys of the block's last query
  for (int64_t j0 = 0; j0 < last_keys; j0 += row_chunk) {
    for (int64_t t = 0; t < tq; ++t) {
      const int64_t n_keys = a.pos0 + t0 + t + 1;  // causal
      if (j0 >= n_keys) continue;
      const int64_t rows = std::min(row_chunk, n_keys - j0);
      const float* q = a.q + (t0 + t) * q_dim + h * a.head_dim;
      const std::size_t off = std::size_t(j0 * a.ld) * elt;
      if (a.kv_f16)
        kt.attn_scores_f16(reinterpret_cast<const uint16_t*>(kh + off), a.ld, rows, q, a.head_dim, scale,
                           scores + t * a.n_ctx + j0);
      else
        kt.attn_scores_f32(reinterpret_cast<const float*>(kh + off), a.ld, rows, q, a.head_dim, scale,
                           scores + t * a.n_ctx + j0);
    }
  }
  for (int64_t t = 0; t < tq; ++t) {
    kt.softmax(scores + t * a.n_ctx, a.pos0 + t0 + t + 1);
    std::memset(a.out + (t0 + t) * q_dim + h * a.head_dim, 0, size_t(a.head_dim) * sizeof(float));
  }
  for (int64_t j0 = 0; j0 < last_keys; j0 += row_chunk) {
    for (int64_t t = 0; t < tq; ++t) {
      const int64_t n_keys = a.pos0 + t0 + t + 1;
      if (j0 >= n_keys) continue;
      const int64_t rows = std::min(row_chunk, n_keys - j0);
      float* out = a.out + (t0 + t) * q_dim + h * a.head_dim;
      const std::size_t off = std::size_t(j0 * a.ld) * elt;
      if (a.kv_f16)
        kt.attn_values_f16(out, scores + t * a.n_ctx + j0, reinterpret_cast<const uint16_t*>(vh + off), a.ld,
                           rows, a.head_dim);
      else
        kt.attn_values_f32(out, scores + t * a.n_ctx + j0, reinterpret_cast<const float*>(vh + off), a.ld,
                           rows, a.head_dim);
    }
  }
}
}  // namespace

// Work items: (head, block of up to attention_query_block consecutive query tokens), head-major,
// for every sequence in turn, all in one parallel region (a decoding step of many sequences is
// many small items). Within an item the cache rows go by in chunks that stay in L1/L2 while every
// query of the block uses them. Every score is still one attn_scores row and every output element
// one fma chain over the rows in order (attn_values loads and stores its accumulators), so the
// results do not depend on the blocking or on the other sequences: bit-identical to one query at
// a time.
void attention(const kernels::kernel_table& kt, std::span<const attention_args> seqs, int n_threads) {
  const int nt = std::max(1, n_threads);
  constexpr int64_t qb = attention_query_block;
  // first item of each sequence (on the stack for up to 63 sequences: no allocation per layer)
  int64_t items = 0;
  int64_t first[64];
  std::vector<int64_t> first_heap;
  int64_t* firsts = first;
  if (seqs.size() + 1 > 64) {
    first_heap.resize(seqs.size() + 1);
    firsts = first_heap.data();
  }
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    firsts[s] = items;
    items += (seqs[s].m + qb - 1) / qb * seqs[s].n_head;
  }
  firsts[seqs.size()] = items;
  if (items == 0) return;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    std::size_t s = 0;
    while (firsts[s + 1] <= it) ++s;  // few sequences: a linear search is cheapest
    const attention_args& a = seqs[s];
    const int64_t n_blocks = (a.m + qb - 1) / qb, local = it - firsts[s];
    const int64_t h = local / n_blocks, t0 = (local % n_blocks) * qb;
    attention_item(kt, a, h, t0, a.scratch + int64_t(omp_get_thread_num()) * qb * a.n_ctx);
  }
}

void attention(const kernels::kernel_table& kt, const attention_args& a, int n_threads) {
  attention(kt, std::span<const attention_args>(&a, 1), n_threads);
}

}  // namespace qllm::ops

namespace qllm::ops {
int default_threads() noexcept { return qllm::default_threads(); }
}  // namespace qllm::ops
