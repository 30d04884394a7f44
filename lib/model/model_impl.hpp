// The loaded model's weights, as the forward pass reads them.
#pragma once
#include <array>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "ops/matmul.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm {

struct layer_weights {
  const float* attn_norm = nullptr;  // [n_embd]
  ops::packed_weights wq;            // [n_embd] rows of n_embd
  ops::packed_weights wk;            // [kv_dim] rows of n_embd
  ops::packed_weights wv;            // [kv_dim] rows of n_embd
  ops::packed_weights wo;            // [n_embd] rows of n_embd
  const float* ffn_norm = nullptr;   // [n_embd]
  ops::packed_weights w_gate;        // [n_ff] rows of n_embd
  ops::packed_weights w_up;          // [n_ff] rows of n_embd
  ops::packed_weights w_down;        // [n_embd] rows of n_ff
};

class model_impl {
 public:
  explicit model_impl(gguf::file f) : file(std::move(f)) {}
  model_config cfg;
  // The mapping, while f16/f32 matrices are read from it in place; otherwise (quantized weights,
  // all repacked) released after load, the small tensors read in place copied first, so the file
  // may be replaced, truncated or deleted while the model is in use.
  std::optional<gguf::file> file;
  std::unique_ptr<uint8_t[]> owned_embd;  // the embedding table's copy once the file is released
  ggml_type wtype = ggml_type::f32;
  std::string mix;        // model::weight_mix()
  bool k_quants = false;  // some matrix runs k-quant kernels: activations need Q8_K too
  std::shared_ptr<const tokenizer> tok;
  const kernels::kernel_table* kt = nullptr;  // the table contexts of this model use  // null when the file has no vocabulary

  ggml_type embd_type = ggml_type::f32;
  const uint8_t* embd = nullptr;  // [n_vocab] rows of n_embd, GGUF layout
  std::size_t embd_row_bytes = 0;
  std::vector<layer_weights> layers;
  const float* output_norm = nullptr;  // [n_embd]
  ops::packed_weights output;          // [n_vocab] rows of n_embd

  int64_t n_params = 0;
  std::size_t weight_bytes = 0;
  double load_seconds = 0;
  std::array<double, 3> load_stages{};  // parse + validate, allocate weights, repack

  // Dequantized embedding row of `token` (0 <= token < n_vocab) into out[n_embd].
  void embed(int32_t token, float* out) const noexcept;

  // A mapping, unmapped on destruction.
  class mapping {
   public:
    mapping() = default;
    mapping(void* p, std::size_t n) : p_(p), n_(n) {}
    mapping(mapping&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
    mapping& operator=(mapping&& o) noexcept {
      std::swap(p_, o.p_);
      std::swap(n_, o.n_);
      return *this;
    }
    ~mapping();
    void* get() const noexcept { return p_; }

   private:
    void* p_ = nullptr;
    std::size_t n_ = 0;
  };
  mapping arena;                 // every repacked matrix, one allocation (2 MiB aligned)
  const uint8_t* arena_base = nullptr;  // in `arena` or in `cache`
  mapping cache;                 // the repacked-weight cache file, when loaded from or moved to one
  std::string cache_status;      // model::cache_status()
  std::vector<std::unique_ptr<float[]>> owned_f32;  // converted norms / bf16 matrices
};

}  // namespace qllm
