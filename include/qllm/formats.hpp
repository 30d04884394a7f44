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
