// f32 rows → the bytes of a GGUF tensor row (f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k), through the scalar
// reference quantizers; shared by the random-model generator and the converter.
#pragma once
#include <cstddef>
#include <cstdint>

#include "qllm/formats.hpp"

namespace qllm {

// True for the types encode_row writes.
bool encodable(ggml_type t) noexcept;
// Bytes of one encoded row of k values (k a multiple of the type's block size).
std::size_t encoded_row_bytes(ggml_type t, int64_t k) noexcept;
void encode_row(ggml_type t, const float* x, int64_t k, uint8_t* dst);

}  // namespace qllm
