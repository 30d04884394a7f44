#include "convert/encode.hpp"

#include <cstring>

#include "qllm/reference.hpp"

namespace qllm {

bool encodable(ggml_type t) noexcept {
  return t == ggml_type::q4_0 || t == ggml_type::q8_0 || t == ggml_type::q4_k || t == ggml_type::q5_k ||
         t == ggml_type::q6_k || t == ggml_type::f16 || t == ggml_type::bf16 || t == ggml_type::f32;
}

std::size_t encoded_row_bytes(ggml_type t, int64_t k) noexcept {
  switch (t) {
    case ggml_type::q4_0: return std::size_t(k / qk) * sizeof(block_q4_0);
    case ggml_type::q8_0: return std::size_t(k / qk) * sizeof(block_q8_0);
    case ggml_type::q4_k: return std::size_t(k / qk_k) * sizeof(block_q4_k);
    case ggml_type::q5_k: return std::size_t(k / qk_k) * sizeof(block_q5_k);
    case ggml_type::q6_k: return std::size_t(k / qk_k) * sizeof(block_q6_k);
    case ggml_type::f16:
    case ggml_type::bf16: return std::size_t(k) * 2;
    default: return std::size_t(k) * 4;
  }
}

void encode_row(ggml_type t, const float* x, int64_t k, uint8_t* dst) {
  switch (t) {
    case ggml_type::q4_0: ref::quantize_row_q4_0(x, reinterpret_cast<block_q4_0*>(dst), k); break;
    case ggml_type::q8_0: ref::quantize_row_q8_0(x, reinterpret_cast<block_q8_0*>(dst), nullptr, k); break;
    case ggml_type::q4_k: ref::quantize_row_q4_k(x, reinterpret_cast<block_q4_k*>(dst), k); break;
    case ggml_type::q5_k: ref::quantize_row_q5_k(x, reinterpret_cast<block_q5_k*>(dst), k); break;
    case ggml_type::q6_k: ref::quantize_row_q6_k(x, reinterpret_cast<block_q6_k*>(dst), k); break;
    case ggml_type::f16:
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
    case ggml_type::bf16:
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
    default: std::memcpy(dst, x, std::size_t(k) * 4); break;
  }
}

}  // namespace qllm
