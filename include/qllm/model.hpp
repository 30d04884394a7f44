// A Llama-2 model loaded from GGUF, and the inference context (KV cache + scratch) that runs it.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>
#include <span>
#include <string>

#include "qllm/formats.hpp"

namespace qllm {

// Hyper-parameters from the GGUF `llama.*` metadata.
struct model_config {
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;   // llama.context_length
  int64_t n_embd = 0;        // llama.embedding_length
  int64_t n_layer = 0;       // llama.block_count
  int64_t n_ff = 0;          // llama.feed_forward_length
  int64_t n_head = 0;        // llama.attention.head_count
  int64_t n_head_kv = 0;     // llama.attention.head_count_kv (grouped-query attention)
  int64_t n_rot = 0;         // llama.rope.dimension_count
  float rope_freq_base = 10000.0f;
  // Linear RoPE scaling (llama.rope.scaling.type "linear" with .factor f, or the older
  // llama.rope.scale_linear f): positions are multiplied by 1/f. 1 = no scaling.
  float rope_freq_scale = 1.0f;
  // Per-frequency RoPE factors (the tensor rope_freqs.weight, n_rot / 2 floats, as llama.cpp's
  // converter writes Llama-3.1's "llama3" scaling): theta_j = pos * base^(-2j / n_rot) / f_j.
  // Empty: every factor 1.
  std::vector<float> rope_freq_factors;
  float rms_eps = 1e-5f;     // llama.attention.layer_norm_rms_epsilon
  int64_t head_dim() const noexcept { return n_embd / n_head; }
  int64_t kv_dim() const noexcept { return head_dim() * n_head_kv; }
};

struct model_options {
  int n_threads = 0;  // for the load-time repack; 0 = OpenMP default
  // Quantize F16/BF16/F32 weight matrices to Q8_0 at load (norms stay f32).
  bool quantize_float_weights = false;
  // Kernel table for this model's contexts ("avx2", "avx512_vnni", "neon", "scalar", ...); empty:
  // the process default (best for this CPU, or QLLM_ISA). Unknown or not runnable here: error.
  std::string isa;
  // Repacked-weight cache directory (docs/performance.md, "Load time"): the first load writes the
  // repacked weights there; later loads, by any process, map them read-only and shared instead of
  // allocating and repacking. Empty: the QLLM_CACHE_DIR environment variable, if set; "none" (here
  // or there): no cache. A cache that cannot be written or used never fails the load.
  std::string cache_dir;
};

class model_impl;
class tokenizer;

// Immutable after load; share one model between many contexts on different threads.
// True for the weight types model::load reads without kernels of their own (Q4_1, Q5_0, Q5_1,
// Q2_K, Q3_K): their matrices are dequantized and stored as Q8_0 at load, so they run at Q8_0's
// speed and memory (docs/formats.md). Q4_K, Q5_K and Q6_K have kernels.
bool converted_at_load(ggml_type t) noexcept;

class model {
 public:
  // Throws qllm::error: errc::io (cannot open/map), errc::bad_format (invalid GGUF, missing or
  // inconsistent metadata, a tensor with the wrong shape), errc::unsupported (architecture other
  // than llama, a weight type without kernels, named with the tensor), errc::out_of_memory (the
  // weights do not fit what this process can have, or an allocation failed).
  static std::shared_ptr<const model> load(const std::string& path, const model_options& opt = {});
  ~model();

  const model_config& config() const noexcept;
  ggml_type weight_type() const noexcept;        // the type of most matrices (e.g. q4_0)
  // The file's tensor types, most frequent first, after the scheme general.file_type names:
  // "Q4_K_M: 193 q4_k, 65 f32, 33 q6_k". Types converted at load are counted as stored.
  const std::string& weight_mix() const noexcept;
  int64_t n_params() const noexcept;             // elements of all weight tensors
  std::size_t weight_bytes() const noexcept;     // bytes streamed by one decoding step
  double load_seconds() const noexcept;
  // The load's parts: parse and validate the file, allocate the weight arena, repack weights.
  std::array<double, 3> load_stage_seconds() const noexcept;
  const char* isa() const noexcept;  // name of the kernel table its contexts use
  // What the repacked-weight cache did: "off", "mapped PATH", "wrote PATH (SIZE, S s)" or
  // "not written: REASON", the last two followed by " in place of an unusable one (REASON)" when
  // a cache file was there but did not match (made from another file, truncated, bad header).
  const std::string& cache_status() const noexcept;
  // Whether the model still reads its file's mapping: true when f16/f32 matrices are read in
  // place (then replace the file by rename, never by writing over it); false for quantized
  // weights, all repacked at load, after which the file may be replaced or deleted.
  bool file_mapped() const noexcept;
  // The vocabulary stored in the file; nullptr when it has none (then only token ids work).
  const tokenizer* get_tokenizer() const noexcept;
  const model_impl& impl() const noexcept { return *impl_; }

 private:
  explicit model(std::unique_ptr<model_impl> impl);
  static std::shared_ptr<const model> load_unguarded(const std::string& path, const model_options& opt);
  std::unique_ptr<model_impl> impl_;
};

enum class kv_type : uint32_t { f16 = 1, f32 = 0 };

struct context_params {
  int64_t n_ctx = 0;     // KV cache size in tokens; 0 = the model's training context
  int64_t n_batch = 512;  // tokens per forward pass; longer prompts run in several
  int n_threads = 0;     // 0 = OpenMP default
  kv_type kv = kv_type::f16;
};

class context_impl;

// KV cache and scratch for one sequence; one thread at a time. Every buffer is allocated here:
// eval does not allocate (except the all-logits buffer, on first request).
class context {
 public:
  // Throws qllm::error(errc::invalid_argument) for a bad n_ctx / n_batch.
  context(std::shared_ptr<const model> m, const context_params& p = {});
  ~context();
  context(const context&) = delete;
  context& operator=(const context&) = delete;

  // Runs tokens at positions n_past() .. n_past() + size - 1. Returns the logits of the last token
  // ([n_vocab]) or, with all_logits, of every token ([size][n_vocab]); valid until the next call.
  // Throws errc::invalid_argument (empty input, token id out of range) or errc::context_overflow
  // (n_past() + size > n_ctx) before changing any state.
  std::span<const float> eval(std::span<const int32_t> tokens, bool all_logits = false);

  int64_t n_past() const noexcept;
  int64_t n_ctx() const noexcept;
  void clear() noexcept;  // forget the sequence (n_past = 0)
  // Keep the first n tokens of the sequence (0 <= n <= n_past), e.g. a shared prompt prefix.
  void truncate(int64_t n);
  // Context shift: forget tokens [n_keep, n_keep + n_discard) and move the later ones down, with
  // their keys re-rotated (RoPE) for the new positions instead of recomputed. n_past -= n_discard.
  void shift(int64_t n_keep, int64_t n_discard);
  // eval() checks *flag before each chunk of n_batch tokens; when it is set, eval forgets the
  // chunks it ran (n_past as before the call) and throws errc::cancelled. nullptr: no checks.
  void set_abort_flag(const std::atomic<bool>* flag) noexcept;
  // Sentence embedding for retrieval: evaluates `tokens` as a new sequence and returns the mean
  // over tokens of the final hidden state (after the output RMSNorm), L2-normalised, [n_embd].
  std::vector<float> embed(std::span<const int32_t> tokens);
  const model& get_model() const noexcept;
  context_impl& impl() noexcept { return *impl_; }

 private:
  std::unique_ptr<context_impl> impl_;
};

// Many sequences sharing one model in shared forward passes: continuous batching. Each sequence
// has its own KV cache of n_ctx positions; one eval() runs the new tokens of several sequences
// together, so every weight matrix streams from memory once per pass for all of them (a GEMM
// with one row per token) while attention runs per sequence over its own cache. A sequence's
// logits are bit-identical to those of a context that ran the same tokens alone, whatever the
// other sequences in the pass. One thread at a time.
class batch_context {
 public:
  // p.n_ctx: each sequence's window (0 = the model's training context); p.n_batch: tokens per
  // forward pass, all sequences together. The KV caches of n_seq (1 .. 1024) sequences are
  // allocated (untouched pages cost no memory until used). Errors as context's.
  batch_context(std::shared_ptr<const model> m, const context_params& p, int n_seq);
  ~batch_context();
  batch_context(const batch_context&) = delete;
  batch_context& operator=(const batch_context&) = delete;

  struct entry {
    int32_t seq = 0;                   // 0 .. n_seq - 1; at most one entry per sequence per eval
    std::span<const int32_t> tokens;   // appended at n_past(seq)
    bool logits = true;                // compute the logits of its last token
    bool all_logits = false;           // compute the logits of every token (speculation's drafts)
  };
  // Runs the entries' tokens in passes of at most n_batch tokens (an entry may straddle two).
  // Checks every entry before changing any state: errc::invalid_argument (no entries, a sequence
  // out of range or repeated, no tokens, a token outside the vocabulary), errc::context_overflow
  // (a sequence's window full). The abort flag is checked before each pass; when set, every
  // sequence is as before the call and errc::cancelled is thrown.
  void eval(std::span<const entry> entries);
  // Logits ([n_vocab]) of entry i's last token in the last eval; valid until the next eval.
  // errc::invalid_argument when that entry did not ask for them.
  std::span<const float> logits(std::size_t i) const;
  // Logits of token j of entry i: any token of an all_logits entry, the last of one that asked for
  // logits; errc::invalid_argument otherwise.
  std::span<const float> logits(std::size_t i, std::size_t j) const;

  int n_seq() const noexcept;
  int64_t n_ctx() const noexcept;
  int64_t n_batch() const noexcept;
  int64_t n_past(int32_t seq) const;
  void clear(int32_t seq);                    // forget the sequence (n_past = 0)
  void truncate(int32_t seq, int64_t n);      // keep its first n tokens
  void shift(int32_t seq, int64_t n_keep, int64_t n_discard);  // context::shift for one sequence
  void set_abort_flag(const std::atomic<bool>* flag) noexcept;
  const model& get_model() const noexcept;

 private:
  void check_seq(int32_t seq, const char* what) const;
  std::unique_ptr<context_impl> impl_;
  std::vector<int64_t> logit_row_;  // per entry of the last eval: its first row of logits, or -1
  std::vector<int64_t> logit_rows_;  // per entry: how many rows (0, 1 or its tokens)
  std::vector<int64_t> logit_tokens_;  // per entry: its tokens (the rows are of the last ones)
  std::vector<char> seen_;
};

}  // namespace qllm
