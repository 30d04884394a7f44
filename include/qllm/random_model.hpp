// Llama-architecture GGUF files with seeded random weights, for tests and benchmarks.
#pragma once
#include <memory>
#include <vector>
#include <utility>
#include <cstdint>
#include <string>
#include <string_view>

#include "qllm/formats.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm {

struct random_model_spec {
  int64_t n_vocab = 512;
  int64_t n_embd = 64;
  int64_t n_layer = 2;
  int64_t n_ff = 160;
  int64_t n_head = 4;
  int64_t n_head_kv = 4;  // < n_head: grouped-query attention
  int64_t n_ctx = 256;    // llama.context_length
  ggml_type type = ggml_type::q4_0;  // every matrix, embeddings and output included (norms: f32)
  // A quant::scheme name ("q4_k_m", "q5_k_m", ...): each matrix gets the type that scheme's rules
  // give it (quantize.hpp), overriding `type`.
  std::string scheme;
  uint32_t seed = 1;
  bool tied_output = false;  // omit output.weight (the embedding table is reused)
  bool vocabulary = true;    // false: no tokenizer.ggml.* keys (a file only token ids work with)
  // Extra metadata written after (and overriding) the defaults, e.g. RoPE scaling keys.
  std::vector<std::pair<std::string, std::string>> extra_strings;
  std::vector<std::pair<std::string, float>> extra_f32;
  std::vector<std::pair<std::string, uint64_t>> extra_u64;
  float rope_freq_base = 10000.0f;  // llama.rope.freq_base (Llama-3: 500000)
  // A vocabulary written instead of the synthetic one (n_vocab must equal its size), e.g. a
  // Llama-3 byte-level BPE vocabulary from vocabulary_from_hf_json.
  std::shared_ptr<const qllm::vocabulary> vocab;
  // Written as the tensor rope_freqs.weight (f32, n_rot / 2 values) when not empty: Llama-3.1's
  // RoPE frequency factors as llama.cpp's converter stores them.
  std::vector<float> rope_freqs;
  // The Hugging Face rope_scaling (rope_type "llama3") that rope_freqs were computed from, which
  // write_random_hf puts in config.json; factor 0: none (the Llama-3 presets set it).
  struct llama3_rope_params {
    double factor = 0, low = 0, high = 0, original_ctx = 0;
  } llama3_rope;
};

// Presets: "tiny" (the defaults above), "small" (dim 256, 4 layers, GQA 8/2, vocab 2048),
// "7b" (Llama-2-7B: dim 4096, 32 layers, 32 heads, ffn 11008, vocab 32000, ctx 4096), Code Llama
// shapes (RoPE base 1e6, ctx 16384): "codellama-7b" (the 7B shape with vocab 32016) and
// "codellama-tiny" (the tiny shape), and
// Llama-3 shapes (vocab 128256, GQA 32/8 or 4/2, RoPE base 500000, llama3 RoPE factors for
// factor 8, low 1, high 4, original context 8192): "llama3-8b" (Llama-3.1-8B: dim 4096, 32
// layers, ffn 14336, ctx 131072), "llama3-1b" (Llama-3.2-1B: dim 2048, 16 layers, ffn 8192, tied
// embeddings, ctx 131072), "llama3-tiny" (dim 64, 2 layers, heads 4/2, ffn 160, tied, ctx 256,
// original context 64). Throws qllm::error(errc::invalid_argument) for another name.
random_model_spec random_model_preset(std::string_view name);

// Llama-3.1's RoPE frequency factors (Hugging Face rope_type "llama3") as llama.cpp's converter
// writes them to rope_freqs.weight: one divisor of each frequency theta_i = base^(-2i/head_dim),
// 1 for wavelengths under original_ctx / high, `factor` above original_ctx / low, interpolated
// between.
std::vector<float> llama3_rope_factors(int64_t head_dim, double base, double factor, double low, double high,
                                       double original_ctx);

// The synthetic byte-fallback vocabulary of random models: <unk>, <s>, </s>, the 256 byte tokens,
// then pieces "▁", "a", "▁b", ... with falling scores (n_vocab >= 259).
vocabulary random_vocabulary(int64_t n_vocab);

// Writes the file: llama.* metadata as llama.cpp writes it, a byte-fallback vocabulary with
// synthetic pieces, and weights with a scale that keeps activations finite and logits spread.
// Throws qllm::error (errc::invalid_argument for an impossible spec, errc::io on write failure).
void write_random_model(const std::string& path, const random_model_spec& spec);

// The same model as a Hugging Face Llama directory (config.json, model.safetensors or `shards`
// shards with model.safetensors.index.json, tokenizer.model, generation_config.json), the weights in
// `dtype` ("F32", "F16" or "BF16") and in HF's layout (Q/K rows in rotate-half order). Streams one
// tensor at a time. For tests and for measuring `qllm convert`. A Llama-3 spec (a byte-level BPE
// `vocab`, rope_freqs with llama3_rope) gets tokenizer.json and tokenizer_config.json instead of
// tokenizer.model and rope_scaling in config.json; rope_freqs without llama3_rope, or that differ
// from the factors llama3_rope gives, are error(unsupported).
void write_random_hf(const std::string& dir, const random_model_spec& spec, const std::string& dtype, int shards);

}  // namespace qllm
