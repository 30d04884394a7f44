// GGUF → GGUF requantization (`qllm quantize`) and the per-tensor type rules of the k-quant mixes.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "qllm/formats.hpp"

namespace qllm::quant {

// What a file is quantized to: one type for every matrix, or a mix (q4_k_m, q5_k_m).
enum class scheme { f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m };

// "q4_k_m" → scheme::q4_k_m (case-insensitive); throws qllm::error(invalid_argument) naming the
// accepted names.
scheme parse_scheme(std::string_view name);
const char* scheme_name(scheme s) noexcept;
// general.file_type as llama.cpp numbers it (LLAMA_FTYPE_MOSTLY_*).
uint32_t file_type(scheme s) noexcept;
// The scheme a file's general.file_type names, for reports ("Q4_K_M"); "" for one qllm does
// not know.
std::string file_type_name(uint32_t ftype);

// What the mix rules need to know of the model.
struct model_shape {
  int64_t n_layer = 0;
  bool gqa = false;          // head_count_kv < head_count
  bool tied_output = false;  // no output.weight: the embedding table is the output
};

// The type of one tensor of a Llama model under scheme s, by llama.cpp's rules for Llama:
//  - 1-D tensors (norms) stay f32;
//  - output.weight (token_embd.weight when the output is tied) is q6_k for every quantized
//    scheme but q8_0;
//  - q4_k_m / q5_k_m: attn_v and ffn_down of the layers use_more_bits picks (the first and last
//    eighth and every third between) are q6_k;
//  - q4_k_s: attn_v of layers 0-3 and ffn_down of the first eighth of the layers are q5_k;
//  - an 80-layer model with grouped-query attention (Llama-2-70B): attn_v at least q5_k;
//  - a k-quant whose rows are not a multiple of 256 falls back to q8_0 (llama.cpp writes
//    q5_0/q5_1 there, types qllm reads but does not write).
// `layer` is the block index of blk.N.* tensors (-1 for others).
ggml_type tensor_type(scheme s, std::string_view name, int64_t ne0, int64_t n_dims, int64_t layer,
                      const model_shape& m) noexcept;
// i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2
bool use_more_bits(int64_t i, int64_t n) noexcept;

struct progress {
  std::size_t done = 0, total = 0;           // tensors
  uint64_t bytes_done = 0, bytes_total = 0;  // source bytes
  double seconds = 0;
};

struct options {
  scheme type = scheme::q4_k_m;
  // Quantized sources (q4_0, q8_0, k-quants...) are refused unless set: each requantization
  // adds error to error already there.
  bool allow_requantize = false;
  int n_threads = 0;  // 0: qllm's default
  std::function<void(const progress&)> on_progress;  // after each tensor
};

struct report {
  std::map<std::string, int> types;  // type name → tensors written in it
  std::size_t tensors = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data
  double seconds = 0;
};

// Reads `in` (a Llama GGUF: the mapped file, one tensor at a time), writes `out` atomically (a
// temporary file in its directory, fsync, rename: a failed or interrupted run leaves no file and
// an existing `out` untouched). Metadata is copied, general.file_type and
// general.quantization_version set. Throws qllm::error: io, bad_format (the reader's checks),
// unsupported (a source type with no reader, a quantized source without allow_requantize, a
// non-Llama file), invalid_argument (out is in).
report quantize_file(const std::string& in, const std::string& out, const options& opt);

}  // namespace qllm::quant
