// Matmul orchestration: weight packing, activation quantization, splitting work over OpenMP
// threads. Work is split over output rows (8-row panels) and tokens, never over the reduction
// dimension, so every output element is computed by one kernel call in one fixed order: results
// are bit-identical for any thread count.
#pragma once
#include <cstdint>
#include <memory>

#include "kernels/kernel_table.hpp"

namespace qllm::ops {

// A weight matrix W[n][k] in the layout the kernels read: Q4_0/Q8_0 repacked into 8-row panels
// (owned), F16/F32 rows as given (borrowed; the source must outlive this object).
class packed_weights {
 public:
  packed_weights() = default;
  // src holds n rows of k elements in GGUF layout. Repacked types go to `dst` (packed_size bytes,
  // 64-byte aligned, owned by the caller) or, when dst is null, to an allocation of our own.
  // Throws qllm::error for an unsupported type, a k that is not a multiple of the type's block
  // (32, or 256 for k-quants), or (bad_format) a block whose scale is infinite or NaN.
  packed_weights(ggml_type type, const void* src, int64_t n, int64_t k, int n_threads = 1,
                 void* dst = nullptr);
  // A matrix already in the repacked layout (packed_size(type, n, k) bytes at `packed`, 64-byte
  // aligned, e.g. a mapped cache file that outlives this object); nothing is copied or checked.
  // Throws qllm::error(errc::invalid_argument) for a type that is not repacked or a bad shape.
  static packed_weights view(ggml_type type, int64_t n, int64_t k, const void* packed);
  // Bytes a repack of this matrix needs (0 for types read in place: f16, f32).
  static std::size_t packed_size(ggml_type type, int64_t n, int64_t k) noexcept;
  // Whether `type` is repacked (q4_0, q8_0, q4_k, q5_k, q6_k) rather than read in place.
  static bool repacked(ggml_type type) noexcept {
    return type == ggml_type::q4_0 || type == ggml_type::q8_0 || k_quant(type);
  }
  // Whether `type` is a k-quant with kernels (rows a multiple of 256, Q8_K activations).
  static bool k_quant(ggml_type type) noexcept {
    return type == ggml_type::q4_k || type == ggml_type::q5_k || type == ggml_type::q6_k;
  }

  ggml_type type() const noexcept { return type_; }
  int64_t rows() const noexcept { return n_; }
  int64_t cols() const noexcept { return k_; }
  const void* data() const noexcept { return data_; }
  std::size_t bytes() const noexcept { return bytes_; }  // bytes streamed by one pass

 private:
  struct aligned_free {
    void operator()(void* p) const noexcept;
  };
  ggml_type type_ = ggml_type::f32;
  int64_t n_ = 0, k_ = 0;
  std::unique_ptr<void, aligned_free> own_;
  const void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Quantized activations of m tokens (allocated once, reused: no allocation per call): Q8_0 for
// Q4_0/Q8_0 weights and, when asked for (k a multiple of 256), Q8_K for the k-quants.
struct act_q8 {
  std::unique_ptr<block_q8_0[]> blocks;  // [m_max][k/32]
  std::unique_ptr<int32_t[]> sums;       // [m_max][k/32]
  std::unique_ptr<float[]> scales;       // [m_max][k/32] blocks[i].d as float
  std::unique_ptr<block_q8_k[]> kblocks;  // [m_max][k/256], or null
  // blocks, sums and scales token-interleaved (kernels::interleave_tokens) when the last
  // quantize_activations had 5 to kernels::kmax_interleaved tokens (t_m of them; else t_m = 0)
  std::unique_ptr<int8_t[]> t_q;
  std::unique_ptr<int32_t[]> t_sum;
  std::unique_ptr<float[]> t_d;
  int64_t t_m = 0;
  int64_t m_max = 0, k = 0;
  unsigned forms = 0;  // the act_form bits the last quantize_activations wrote
  act_q8() = default;
  act_q8(int64_t m_max, int64_t k, bool k_quants = false);
};

// The forms of quantized activations: Q8_0 blocks (Q4_0/Q8_0 weights), Q8_K (k-quants).
enum act_form : unsigned { act_form_q8_0 = 1, act_form_q8_k = 2, act_form_all = 3 };
// The form matmul needs for weights of this type (0: float weights read the floats).
inline unsigned act_form_for(ggml_type type) noexcept {
  return packed_weights::k_quant(type) ? act_form_q8_k : packed_weights::repacked(type) ? act_form_q8_0 : 0u;
}

// Quantizes x[m][k] into a (m <= a.m_max, k == a.k), in the forms asked for that a holds (Q8_K
// only where it was built for k-quants): a model of k-quants alone skips the Q8_0 blocks.
void quantize_activations(const kernels::kernel_table& kt, const float* x, int64_t m, act_q8& a,
                          int n_threads, unsigned forms = act_form_all);

// y[t * ldy + r] = W[r] . x[t] for t < m. Quantized weights read `xq` (already quantized from
// x; k-quants need its kblocks); float weights read x. ldy >= w.rows().
void matmul(const kernels::kernel_table& kt, const packed_weights& w, const float* x,
            const act_q8* xq, int64_t m, float* y, int64_t ldy, int n_threads);

}  // namespace qllm::ops
