// The per-arch kernel table: one instance per compiled ISA, chosen once at start (dispatch.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "qllm/cpu_features.hpp"
#include "qllm/formats.hpp"

namespace qllm::kernels {

// Weight panels: 8 rows interleaved per block column, so that each 32-bit lane of a vector holds
// one row and the per-block scales of 8 rows load as one vector. Same bytes as 8 GGUF blocks.
// Q4_0x8: chunk c (0..3) is qs[32c .. 32c+31]; row r owns bytes 32c+4r+i (i = 0..3), whose low
// nibble is element 4c+i and high nibble element 16+4c+i of that row's block.
struct block_q4_0x8 {
  uint16_t d[8];  // fp16 scale of each row
  uint8_t qs[128];
};
static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0));
// Q8_0x8: chunk c (0..7) is qs[32c .. 32c+31]; row r owns bytes 32c+4r+i = element 4c+i.
struct block_q8_0x8 {
  uint16_t d[8];
  int8_t qs[256];
};
static_assert(sizeof(block_q8_0x8) == 8 * sizeof(block_q8_0));

// Repack n rows of nb GGUF blocks into ceil(n/8) panels of nb blocks; missing rows are zero.
void repack_q4_0x8(const block_q4_0* src, int64_t n, int64_t nb, block_q4_0x8* dst) noexcept;
void repack_q8_0x8(const block_q8_0* src, int64_t n, int64_t nb, block_q8_0x8* dst) noexcept;

// One quantized matmul call: y[t * ldy + row] = W[row] . x[t] for t < m and every row of panels
// [p0, p1) below n.
struct qgemm_args {
  const void* w;         // [n_panels][nb] block_q4_0x8 or block_q8_0x8
  int64_t nb;            // blocks per row (k / 32)
  int64_t n;             // rows of W (the last panel may be partial)
  const block_q8_0* x;   // [m][nb] activations
  const int32_t* xsum;   // [m][nb] sum of each activation block's quants (Q4_0 needs it)
  int64_t m;             // tokens
  float* y;              // output
  int64_t ldy;           // stride between tokens in y
};

// Float-weight matmul (f32 activations, rows [r0, r1)): y[t * ldy + r] = W[r] . x[t].
struct fgemm_args {
  const void* w;  // [n][k] f16 or f32
  int64_t k;
  const float* x;  // [m][k]
  int64_t m;
  float* y;
  int64_t ldy;
};

struct kernel_table {
  const char* name;
  bool (*supported)(const cpu_features&);

  void (*quantize_row_q8_0)(const float* x, block_q8_0* y, int32_t* sums, int64_t k);
  void (*gemm_q4_0x8)(const qgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_q8_0x8)(const qgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_f16)(const fgemm_args& a, int64_t r0, int64_t r1);
  void (*gemm_f32)(const fgemm_args& a, int64_t r0, int64_t r1);

  float (*dot_f32)(const float* a, const float* b, int64_t n);
  float (*dot_f16_f32)(const uint16_t* a, const float* b, int64_t n);
  void (*axpy_f32)(float* y, float a, const float* x, int64_t n);
  void (*axpy_f16)(float* y, float a, const uint16_t* x, int64_t n);
  // Attention over cache rows of stride ld: out[j] = dot(k + j ld, q, n) * scale for j < rows,
  // each dot in the canonical order of dot_f16_f32 / dot_f32 ...
  void (*attn_scores_f16)(const uint16_t* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                          float scale, float* out);
  void (*attn_scores_f32)(const float* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                          float scale, float* out);
  // ... and y[i] += w[j] v[j ld + i] for j = 0, 1, .. rows-1 in order (repeated axpy).
  void (*attn_values_f16)(float* y, const float* w, const uint16_t* v, int64_t ld, int64_t rows,
                          int64_t n);
  void (*attn_values_f32)(float* y, const float* w, const float* v, int64_t ld, int64_t rows,
                          int64_t n);
  void (*rmsnorm)(float* out, const float* x, const float* w, int64_t n, float eps);
  void (*softmax)(float* x, int64_t n);
  void (*silu_mul)(float* out, const float* gate, const float* up, int64_t n);
  void (*add)(float* out, const float* a, const float* b, int64_t n);
  void (*rope)(float* x, int64_t n_head, int64_t head_dim, const float* cos_dup,
               const float* sin_alt);
};

// tests/check_isa_objects.py reads the `supported` field's relocation at this offset.
static_assert(sizeof(void*) != 8 || offsetof(kernel_table, supported) == 8);

// Every table compiled into this build, best measured first (whether or not this CPU can run
// it); scalar is last.
const std::vector<const kernel_table*>& compiled_tables();
// The tables of compiled_tables() that the CPU in hand can run.
std::vector<const kernel_table*> runnable_tables();
// nullptr when no compiled table has that name.
const kernel_table* find_table(std::string_view name);
// The table in use: QLLM_ISA if set (an unknown or unsupported name throws qllm::error),
// otherwise the best runnable one. Chosen on first call.
const kernel_table& active();

}  // namespace qllm::kernels
