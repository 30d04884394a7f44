// Scalar reference: the plain, readable truth every SIMD kernel is tested against.
//
// qllm fixes the order of every float reduction so that optimised kernels can reproduce these
// results bit for bit (docs/kernels.md):
//  - quantized dot products: the integer block sum is exact; blocks are accumulated in order,
//    acc = fma(float(sumi), d_w * d_x, acc), one chain per output element;
//  - float reductions: element i goes to lane i % 8 (fma or add), a zero-padded tail, then the
//    fixed tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7));
//  - exp: one polynomial (exp_canonical) shared by every path.
#pragma once
#include <cstdint>

#include "qllm/formats.hpp"

namespace qllm::ref {

// --- quantization (k is a multiple of 32) ---
// Q4_0 as llama.cpp: d = max / -8 where max is the value of largest magnitude.
void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k);
void dequantize_row_q4_0(const block_q4_0* x, float* y, int64_t k);
// Q8_0 as llama.cpp: d = amax / 127, q = round-to-nearest-even(x / d).
// `sums` (nullable) receives the integer sum of each block's 32 quants. A block holding a NaN or
// an infinity becomes d = fp16_nan_q8, all quants and the sum 0 (every kernel table does the
// same): its NaN reaches the outputs instead of an out-of-range conversion to integers.
inline constexpr uint16_t fp16_nan_q8 = 0x7e00;
void quantize_row_q8_0(const float* x, block_q8_0* y, int32_t* sums, int64_t k);
void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k);

// Any GGUF weight type qllm reads → f32: f32, f16, bf16, q4_0, q8_0, q4_k, q5_k, q6_k, and
// (converted to Q8_0 at load, no kernels of their own) q4_1, q5_0, q5_1, q2_k, q3_k, with the byte
// layouts GGUF defines (docs/formats.md). `src` holds k values (k a multiple of the type's block).
// Throws std::invalid_argument for another type.
void dequantize_row(ggml_type type, const void* src, float* y, int64_t k);

// --- k-quants: super-blocks of 256 (k a multiple of 256) ---
// Quantizers (for writing files: gen-random, quantize). Q4_K/Q5_K: per sub-block of 32 the range
// [min(0, lo), hi] over 15 (31) steps, the sub-block scales and mins quantized to 6 bits against
// the super-block's d = max scale / 63, dmin = max min / 63; each weight rounded to the nearest
// step of its dequantized grid. Q6_K: per group of 16 the value of largest magnitude maps to -32,
// group scales in int8 against d = max |scale| / 127. Non-finite inputs count as 0.
void quantize_row_q4_k(const float* x, block_q4_k* y, int64_t k);
void quantize_row_q5_k(const float* x, block_q5_k* y, int64_t k);
void quantize_row_q6_k(const float* x, block_q6_k* y, int64_t k);
// Q8_K activations: d = amax / 127 (f32), q = round-to-nearest-even(x / d), bsums per 16. A
// super-block holding a NaN or an infinity becomes d = NaN, all quants and sums 0.
void quantize_row_q8_k(const float* x, block_q8_k* y, int64_t k);
// One super-block's quants in element order (0..15, 0..31, 0..63), its sub-block scales and mins
// (Q4_K/Q5_K, 8 of each) or group scales (Q6_K, 16).
void unpack_q4_k(const block_q4_k& b, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept;
void unpack_q5_k(const block_q5_k& b, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept;
void unpack_q6_k(const block_q6_k& b, uint8_t q[256], int8_t sc[16]) noexcept;
// Canonical k-quant dots over nb super-blocks: exact integer sums per super-block, then
//   Q4_K/Q5_K: sumi = sum_j sc_j * sum_{e in j} q_e x_e, summ = sum_j mn_j (bsums[2j] + bsums[2j+1]),
//              acc = fma(float(sumi), d_w * d_x, acc); acc = fma(float(-summ), dmin_w * d_x, acc)
//   Q6_K:      sumi = sum_g sc_g * sum_{e in g} (q_e - 32) x_e, acc = fma(float(sumi), d_w * d_x, acc)
float dot_q4_k_q8_k(const block_q4_k* w, const block_q8_k* x, int64_t nb) noexcept;
float dot_q5_k_q8_k(const block_q5_k* w, const block_q8_k* x, int64_t nb) noexcept;
float dot_q6_k_q8_k(const block_q6_k* w, const block_q8_k* x, int64_t nb) noexcept;

// --- dot products ---
int32_t dot_block_q4_0_q8_0(const block_q4_0& w, const block_q8_0& x) noexcept;  // exact
int32_t dot_block_q8_0_q8_0(const block_q8_0& w, const block_q8_0& x) noexcept;  // exact
float dot_q4_0_q8_0(const block_q4_0* w, const block_q8_0* x, int64_t nb) noexcept;
float dot_q8_0_q8_0(const block_q8_0* w, const block_q8_0* x, int64_t nb) noexcept;
float dot_f16_f32(const uint16_t* w, const float* x, int64_t n) noexcept;
float dot_f32(const float* w, const float* x, int64_t n) noexcept;

// Reference matmul y[m][n] = W[n][:] . x[m][:] for W of type f32, f16, q4_0, q8_0, q4_k, q5_k or
// q6_k (rows of k elements, GGUF layout). Activations are quantized to Q8_0 (Q8_K for k-quants).
// Throws std::invalid_argument for another type or a k that the type cannot hold.
void matmul(ggml_type type, const void* w, int64_t n, int64_t k, const float* x, int64_t m,
            float* y);

// --- float operations of the forward pass ---
float sum8(const float lanes[8]) noexcept;  // the canonical reduction tree
float exp_canonical(float x) noexcept;
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) noexcept;
void softmax(float* x, int64_t n) noexcept;
void silu_mul(float* out, const float* gate, const float* up, int64_t n) noexcept;
void add(float* out, const float* a, const float* b, int64_t n) noexcept;
void axpy_f32(float* y, float a, const float* x, int64_t n) noexcept;     // y += a x
void axpy_f16(float* y, float a, const uint16_t* x, int64_t n) noexcept;  // y += a x
// Attention over `rows` cache rows of stride ld (see kernel_table): scores = dots * scale, and
// the weighted sum of value rows as repeated axpy in row order.
void attn_scores_f16(const uint16_t* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                     float scale, float* out) noexcept;
void attn_scores_f32(const float* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                     float scale, float* out) noexcept;
void attn_values_f16(float* y, const float* w, const uint16_t* v, int64_t ld, int64_t rows,
                     int64_t n) noexcept;
void attn_values_f32(float* y, const float* w, const float* v, int64_t ld, int64_t rows,
                     int64_t n) noexcept;
// RoPE on adjacent pairs (GGUF Llama convention) for n_head heads of head_dim values each.
// cos_dup[i] = cos(theta_{i/2}), sin_alt[i] = (i odd ? +1 : -1) * sin(theta_{i/2}).
void rope(float* x, int64_t n_head, int64_t head_dim, const float* cos_dup,
          const float* sin_alt) noexcept;
// Fills the tables above for position pos: theta_j = pos * base^(-2j / rot_dim) / factor_j
// (freq_factors: rot_dim / 2 floats, or nullptr for 1); pairs at or beyond rot_dim are left
// unrotated (cos 1, sin 0).
void rope_table(float* cos_dup, float* sin_alt, int64_t head_dim, int64_t rot_dim, double pos,
                double freq_base, const float* freq_factors = nullptr) noexcept;

}  // namespace qllm::ref
