// Block formats with GGUF's exact byte layouts, and fp16/bf16 conversions.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qllm {

inline constexpr int qk = 32;  // weights per block for Q4_0 and Q8_0

// Q4_0: 32 weights; element j in the low nibble of qs[j], element j+16 in the high nibble.
// value = (q - 8) * d
struct block_q4_0 {
  uint16_t d;       // fp16 scale
  uint8_t qs[qk / 2];
};
static_assert(sizeof(block_q4_0) == 18);
static_assert(offsetof(block_q4_0, qs) == 2);

// Q8_0: 32 int8 weights; value = q * d
struct block_q8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[qk];
};
static_assert(sizeof(block_q8_0) == 34);
static_assert(offsetof(block_q8_0, qs) == 2);

// The k-quants: super-blocks of 256 weights (docs/formats.md has the element order).
inline constexpr int qk_k = 256;

// Q4_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in `scales` (sub-block
// j < 4: low 6 bits of bytes j and j + 4; j >= 4: nibbles of byte j + 4, top bits in bytes j - 4
// and j). value = d * scale_j * q - dmin * min_j, q in 0..15. Byte l of qs[32 i .. 32 i + 31]:
// low nibble element 64 i + l, high nibble element 64 i + 32 + l.
struct block_q4_k {
  uint16_t d, dmin;  // fp16
  uint8_t scales[12];
  uint8_t qs[128];
};
static_assert(sizeof(block_q4_k) == 144);
// Q5_K: Q4_K plus a fifth bit: bit j of qh[l] is the high bit of element 32 j + l (q in 0..31).
struct block_q5_k {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
static_assert(sizeof(block_q5_k) == 176);
// Q6_K: 16 groups of 16 with int8 scales; value = d * scale_g * (q - 32), q in 0..63. For half
// h (elements 128 h ..) and l < 32: ql[64 h + l] low/high nibble = elements l / l + 64,
// ql[64 h + 32 + l] = elements l + 32 / l + 96; bits 2s..2s+1 of qh[32 h + l] are the top bits of
// element l + 32 s. Group g = element / 16.
struct block_q6_k {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(block_q6_k) == 210);
// Q8_K: the activations of the k-quant kernels (GGUF's layout): value = d * q, bsums[g] = sum of
// the 16 quants of group g.
struct block_q8_k {
  float d;
  int8_t qs[qk_k];
  int16_t bsums[qk_k / 16];
};
static_assert(sizeof(block_q8_k) == 292);

// GGUF tensor types qllm knows by number (ggml_type values).
enum class ggml_type : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q8_1 = 9,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  bf16 = 30,
};

// IEEE binary16 <-> binary32; round to nearest even, subnormals, inf and NaN exact.
float fp16_to_fp32(uint16_t h) noexcept;
uint16_t fp32_to_fp16(float f) noexcept;
// bfloat16 <-> binary32; round to nearest even, NaN stays NaN (quiet).
float bf16_to_fp32(uint16_t h) noexcept;
uint16_t fp32_to_bf16(float f) noexcept;

}  // namespace qllm
