// Hugging Face Llama checkpoint (config.json, safetensors shards, tokenizer.model) → GGUF.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qllm/formats.hpp"

namespace qllm::convert {

// What config.json says, after validation.
struct hf_config {
  int64_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, n_vocab = 0, n_ctx = 0;
  double rms_eps = 1e-6, rope_theta = 10000.0;
  double rope_linear_factor = 0;  // rope_scaling {"type": "linear", "factor": f}; 0 when absent
  // rope_scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
  // "original_max_position_embeddings"}: written as rope_freqs.weight; factor 0 when absent
  double llama3_factor = 0, llama3_low = 0, llama3_high = 0, llama3_original_ctx = 0;
  bool tied_output = false;       // tie_word_embeddings
  std::string name;               // the directory's base name, for general.name
};

struct tensor_plan {
  std::string hf_name, gguf_name, shard;  // shard: file name inside the directory
  std::vector<int64_t> ne;                // GGUF order: ne[0] is the row length
  std::string src_dtype;                  // "F16", ...
  ggml_type type = ggml_type::f32;        // written as
  uint64_t src_bytes = 0, out_bytes = 0;
  bool permute_qk = false;  // rows reordered from rotate-half to interleaved RoPE pairs
};

struct plan {
  hf_config config;
  std::vector<tensor_plan> tensors;  // in output order
  int64_t vocab_pieces = 0;          // from tokenizer.model or tokenizer.json
  uint64_t src_bytes = 0, out_bytes = 0;  // tensor data read / written (out: plus metadata)
};

struct progress {
  std::size_t done = 0, total = 0;  // tensors
  uint64_t bytes_done = 0, bytes_total = 0;  // source bytes
  double seconds = 0;
};

struct options {
  ggml_type type = ggml_type::f16;  // f32, f16, bf16, q8_0 or q4_0 for the matrices (norms: f32)
  bool strict = false;              // NaN/Inf weights are an error instead of a warning
  bool permute_qk = true;           // false only in tests that show why the permutation is needed
  std::function<void(const progress&)> on_progress;    // after each tensor
  std::function<void(const std::string&)> on_warning;  // e.g. non-finite weights
};

// Reads and validates the directory (config.json, model.safetensors or the index and its shards,
// every tensor's name, dtype and shape against config.json, tokenizer.model) without converting.
// Throws qllm::error: io (missing files), bad_format (malformed JSON, corrupt shard, shape mismatch,
// missing or unexpected tensor — each message names the file and field), unsupported (another
// architecture, rope scaling type, dtype or output type).
plan make_plan(const std::string& hf_dir, const options& opt);

// Converts: one tensor at a time from the mapped shards into `out_path`, written to a temporary file
// in the same directory, fsync'ed and renamed, so an interrupted or failed run leaves no output.
// Returns the plan it carried out.
plan convert(const std::string& hf_dir, const std::string& out_path, const options& opt);

// The Q/K row permutation: HF's rotate-half layout pairs row i with row i + head_dim/2 of each
// head; GGUF's Llama layout pairs rows 2i and 2i+1. dst row h*hd + 2i + j = src row h*hd + j*hd/2 + i.
void permute_rows_for_rope(const float* src, float* dst, int64_t n_rows, int64_t row_len, int64_t n_heads);

}  // namespace qllm::convert
