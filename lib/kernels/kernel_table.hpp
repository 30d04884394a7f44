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

// K-quant panels: 8 rows of one super-block (256 weights), sub-block scales unpacked to bytes.
// Q4_Kx8: sc[i][r] / mn[i][r] are the scales / mins of sub-blocks 2i and 2i+1 of row r. In
// qs[i] (256 bytes) chunk c (0..7) is qs[i][32c .. 32c+31], where row r owns bytes 32c+4r+e
// (e = 0..3): the low nibble is element 4c+e of sub-block 2i, the high nibble that of 2i+1.
struct block_q4_kx8 {
  uint16_t d[8], dmin[8];
  uint8_t sc[4][8][2];
  uint8_t mn[4][8][2];
  uint8_t qs[4][256];
};
static_assert(sizeof(block_q4_kx8) == 8 * 148);
// Q5_Kx8: Q4_Kx8 plus qh[c], c = 0..7: row r owns bytes 4r+e, whose bit j is the fifth bit of
// element 4c+e of sub-block j.
struct block_q5_kx8 {
  uint16_t d[8], dmin[8];
  uint8_t sc[4][8][2];
  uint8_t mn[4][8][2];
  uint8_t qs[4][256];
  uint8_t qh[8][32];
};
static_assert(sizeof(block_q5_kx8) == 8 * 180);
// Q6_Kx8: sc[j][r] are the scales of groups 2j and 2j+1 (sub-block j) of row r; ql as Q4_Kx8's
// qs (the low 4 bits of each quant); qh[h] (h = 0, 1) chunk c: row r owns bytes 32c+4r+e, whose
// bits 2s..2s+1 are the top bits of element 4c+e of sub-block 4h+s.
struct block_q6_kx8 {
  uint16_t d[8];
  int8_t sc[8][8][2];
  uint8_t ql[4][256];
  uint8_t qh[2][256];
};
static_assert(sizeof(block_q6_kx8) == 8 * 210);

// Repack n rows of nb GGUF blocks into ceil(n/8) panels of nb blocks; missing rows are zero.
// Each returns false when some block's fp16 scale (or min) is infinite or NaN: such a block
// could only give NaN outputs, so the loader refuses the tensor.
bool repack_q4_0x8(const block_q4_0* src, int64_t n, int64_t nb, block_q4_0x8* dst) noexcept;
bool repack_q8_0x8(const block_q8_0* src, int64_t n, int64_t nb, block_q8_0x8* dst) noexcept;
// The same for nb super-blocks per row.
bool repack_q4_kx8(const block_q4_k* src, int64_t n, int64_t nb, block_q4_kx8* dst) noexcept;
bool repack_q5_kx8(const block_q5_k* src, int64_t n, int64_t nb, block_q5_kx8* dst) noexcept;
bool repack_q6_kx8(const block_q6_k* src, int64_t n, int64_t nb, block_q6_kx8* dst) noexcept;
// Row r of a panel back in element order (what ref::unpack_q*_k gives for the GGUF block).
void unpack_panel_row(const block_q4_kx8& p, int r, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept;
void unpack_panel_row(const block_q5_kx8& p, int r, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept;
void unpack_panel_row(const block_q6_kx8& p, int r, uint8_t q[256], int8_t sc[16]) noexcept;

// One quantized matmul call: y[t * ldy + row] = W[row] . x[t] for t < m and every row of panels
// [p0, p1) below n.
struct qgemm_args {
  const void* w;         // [n_panels][nb] block_q4_0x8 or block_q8_0x8
  int64_t nb;            // blocks per row (k / 32)
  int64_t n;             // rows of W (the last panel may be partial)
  const block_q8_0* x;   // [m][nb] activations
  const int32_t* xsum;   // [m][nb] sum of each activation block's quants (Q4_0, and Q8_0 on VNNI)
  const float* xd;       // [m][nb] each activation block's scale as float (x[i].d widened)
  int64_t m;             // tokens
  float* y;              // output
  int64_t ldy;           // stride between tokens in y
  // The same activations token-interleaved (interleave_tokens), or null. A step of continuous
  // batching (5 <= m <= kmax_interleaved) reaches every token from one pointer with them; the
  // tables that do not use them, and m outside that range, read x, xsum and xd.
  const int8_t* xt_q = nullptr;    // [nb][m][32] quants
  const int32_t* xt_sum = nullptr; // [nb][m] sums
  const float* xt_d = nullptr;     // [nb][m] scales
};

// Most tokens of one interleaved copy of the activations.
inline constexpr int64_t kmax_interleaved = 8;
// Blocks b0 <= b < b1 of x, xsum, xd ([m][nb] each) into q [nb][m][32], sum and d [nb][m]
// (disjoint block ranges write disjoint bytes: threads may share the work).
void interleave_tokens(const block_q8_0* x, const int32_t* xsum, const float* xd, int64_t m, int64_t nb, int64_t b0,
                       int64_t b1, int8_t* q, int32_t* sum, float* d) noexcept;

// One k-quant matmul call: as qgemm_args, with nb super-blocks per row and Q8_K activations.
struct kgemm_args {
  const void* w;        // [n_panels][nb] block_q4_kx8, block_q5_kx8 or block_q6_kx8
  int64_t nb;           // super-blocks per row (k / 256)
  int64_t n;            // rows of W
  const block_q8_k* x;  // [m][nb]
  int64_t m;
  float* y;
  int64_t ldy;
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
  void (*quantize_row_q8_k)(const float* x, block_q8_k* y, int64_t k);  // as ref::, bit for bit
  void (*gemm_q4_0x8)(const qgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_q8_0x8)(const qgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_q4_kx8)(const kgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_q5_kx8)(const kgemm_args& a, int64_t p0, int64_t p1);
  void (*gemm_q6_kx8)(const kgemm_args& a, int64_t p0, int64_t p1);
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
  // out[i] = fp32_to_fp16(x[i]): round to nearest even, NaN kept quiet (the KV cache's rows)
  void (*to_f16)(uint16_t* out, const float* x, int64_t n);
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

// Look-ahead in bytes of the software prefetch in the 256-bit Q4_0/Q8_0 tiles (the decoding GEMV
// of every x86 table), chosen once: default_prefetch_bytes(this CPU), or QLLM_PREFETCH=BYTES
// (0..65536) where set.
int q_prefetch_bytes() noexcept;
// 8192 (into L2), or 0 (no look-ahead) on AMD CPUs before family 0x1a (Zen 1-4: on a Zen 3 and a
// Zen 4 look-ahead measured slower; Zen 5 gains from it). docs/kernels.md, "Prefetch".
int default_prefetch_bytes(const cpu_features& f) noexcept;
// Look-ahead of the same tiles when a call has 4 tokens or more (a step of several streams, a
// prompt): 2048 bytes into L2 on every CPU, or QLLM_PREFETCH_STEP=BYTES (0..65536). A tile of
// several tokens takes several times longer per byte than the GEMV, and on a Zen 4 (no decode
// look-ahead) the step of 8 streams waited on the weights: docs/kernels.md, "Prefetch".
int step_prefetch_bytes() noexcept;

}  // namespace qllm::kernels
