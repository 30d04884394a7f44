// The Llama-2 forward pass over a batch of tokens, and the context that owns the KV cache.
//
// Shapes: M tokens per pass, E = n_embd, KV = kv_dim, F = n_ff, V = n_vocab.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/model_impl.hpp"
#include "ops/matmul.hpp"
#include "ops/rows.hpp"
#include "qllm/error.hpp"
#include "qllm/resources.hpp"
#include "qllm/reference.hpp"

namespace qllm {

class context_impl {
 public:
  context_impl(std::shared_ptr<const model> mp, const context_params& p);
  std::span<const float> eval(std::span<const int32_t> tokens, bool all_logits);
  void forward(const int32_t* tokens, int64_t m, float* logits, bool all_logits);
  void shift(int64_t n_keep, int64_t n_discard);
  std::vector<float> embed(std::span<const int32_t> tokens);
  void check_tokens(std::span<const int32_t> tokens) const;
  void allocate_buffers();  // RoPE tables, activations, scratch (throws std::bad_alloc)
  std::vector<double>* embed_acc = nullptr;  // set by embed(): sum of final hidden states

  std::shared_ptr<const model> owner;
  const model_impl& w;
  const model_config& c;
  const kernels::kernel_table& kt;
  int64_t n_ctx, n_batch;
  int nt;
  bool kv_f16;
  int64_t n_past = 0;
  const std::atomic<bool>* abort = nullptr;  // checked between chunks of n_batch tokens

  struct free_deleter {
    void operator()(void* p) const noexcept { std::free(p); }
  };
  // [n_layer][2: k, v][n_head_kv][n_ctx][head_dim], f16 or f32: head-major, so the rows one
  // attention item reads are contiguous (row-major [n_ctx][KV] strided them by KV and missed the
  // TLB on every row)
  std::unique_ptr<void, free_deleter> kv;
  std::vector<float> rope_cos, rope_sin;   // [n_ctx][head_dim]
  std::vector<float> x, xb, q, k, v, att;  // [M][E] (k, v: [M][KV])
  std::vector<float> hb, hb2;              // [M][F]
  std::vector<float> attn_scratch;         // ops::attention_scratch_floats(nt, n_ctx)
  std::vector<float> logits, all;          // [V], [tokens][V]
  ops::act_q8 aq_embd, aq_ff;              // quantized activations, [M][E/32], [M][F/32]
};

namespace {
std::size_t kv_elt(bool f16) { return f16 ? 2 : 4; }
}  // namespace

context_impl::context_impl(std::shared_ptr<const model> mp, const context_params& p)
    : owner(std::move(mp)),
      w(owner->impl()),
      c(w.cfg),
      kt(*w.kt),
      n_ctx(p.n_ctx > 0 ? p.n_ctx : c.n_ctx_train),
      n_batch(p.n_batch),
      nt(p.n_threads > 0 ? p.n_threads : ops::default_threads()),
      kv_f16(p.kv == kv_type::f16) {
  if (p.n_ctx < 0 || n_ctx > (int64_t(1) << 24))
    throw error(errc::invalid_argument, "context: n_ctx " + std::to_string(p.n_ctx) + " out of range");
  if (p.n_threads < 0 || p.n_threads > max_threads())
    throw error(errc::invalid_argument, "context: n_threads " + std::to_string(p.n_threads) +
                                            " out of range (0 = default, at most " +
                                            std::to_string(max_threads()) + ")");
  if (n_batch < 1 || n_batch > (int64_t(1) << 16))
    throw error(errc::invalid_argument, "context: n_batch " + std::to_string(n_batch) + " out of range");
  if (p.kv != kv_type::f16 && p.kv != kv_type::f32)
    throw error(errc::invalid_argument, "context: unknown kv type");
  n_batch = std::min(n_batch, n_ctx);
  const int64_t E = c.n_embd, KV = c.kv_dim(), F = c.n_ff, M = n_batch, hd = c.head_dim();
  const std::size_t kv_bytes = std::size_t(c.n_layer) * 2 * std::size_t(n_ctx) * std::size_t(KV) * kv_elt(kv_f16);
  // Everything this context will hold, checked against what the process can have before any of
  // it is allocated: a window that cannot fit is an error with the numbers, not a crash or swap.
  const std::size_t rope_bytes = 2 * std::size_t(n_ctx * hd) * sizeof(float);
  const std::size_t scratch_bytes =
      sizeof(float) * (std::size_t(M) * std::size_t(4 * E + 2 * KV + 2 * F) +
                       ops::attention_scratch_floats(nt, n_ctx) + std::size_t(c.n_vocab));
  const uint64_t need = uint64_t(kv_bytes) + rope_bytes + scratch_bytes;
  if (const uint64_t have = memory_available_bytes(); have > 0 && need > have)
    throw error(errc::out_of_memory,
                "context: n_ctx " + std::to_string(n_ctx) + " needs " + format_bytes(need) + " (KV cache " +
                    format_bytes(kv_bytes) + ": " + std::to_string(c.n_layer) + " layers x 2 x " +
                    std::to_string(n_ctx) + " positions x " + std::to_string(KV) + " x " +
                    std::to_string(kv_elt(kv_f16)) + " bytes), but this process can have " +
                    format_bytes(have) + " (physical memory, cgroup limit). Lower n_ctx" +
                    (kv_f16 ? "" : " or use an f16 KV cache"));
  void* mem = std::aligned_alloc(64, (kv_bytes + 63) / 64 * 64);  // untouched pages cost no RSS
  if (!mem)
    throw error(errc::out_of_memory, "context: cannot allocate the KV cache (" + format_bytes(kv_bytes) +
                                         " for n_ctx " + std::to_string(n_ctx) + ")");
  kv.reset(mem);
  try {
    allocate_buffers();
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "context: cannot allocate its buffers (" +
                                         format_bytes(rope_bytes + scratch_bytes) + " for n_ctx " +
                                         std::to_string(n_ctx) + ")");
  }
}

void context_impl::allocate_buffers() {
  const int64_t E = c.n_embd, KV = c.kv_dim(), F = c.n_ff, M = n_batch, hd = c.head_dim();
  rope_cos.resize(std::size_t(n_ctx * hd));
  rope_sin.resize(std::size_t(n_ctx * hd));
  for (int64_t pos = 0; pos < n_ctx; ++pos)
    ref::rope_table(&rope_cos[std::size_t(pos * hd)], &rope_sin[std::size_t(pos * hd)], hd, c.n_rot,
                    double(pos) * double(c.rope_freq_scale), double(c.rope_freq_base));
  x.resize(std::size_t(M * E));
  xb.resize(std::size_t(M * E));
  q.resize(std::size_t(M * E));
  att.resize(std::size_t(M * E));
  k.resize(std::size_t(M * KV));
  v.resize(std::size_t(M * KV));
  hb.resize(std::size_t(M * F));
  hb2.resize(std::size_t(M * F));
  attn_scratch.resize(ops::attention_scratch_floats(nt, n_ctx));
  logits.resize(std::size_t(c.n_vocab));
  if (E % qk == 0) aq_embd = ops::act_q8(M, E, w.k_quants);
  if (F % qk == 0) aq_ff = ops::act_q8(M, F, w.k_quants);
}

// One pass over m <= n_batch tokens at positions n_past .. n_past+m-1.
void context_impl::forward(const int32_t* tokens, int64_t m, float* out_logits, bool all_logits) {
  const int64_t E = c.n_embd, KV = c.kv_dim(), F = c.n_ff, hd = c.head_dim();
  const int64_t pos0 = n_past;
  // y[m][rows] = W x, quantizing x once for all matrices that share it.
  auto quantize = [&](const float* in, ops::act_q8& aq) {
    ops::quantize_activations(kt, in, m, aq, nt);
  };
  auto mm = [&](const ops::packed_weights& W, const float* in, const ops::act_q8& aq, float* y) {
    ops::matmul(kt, W, in, &aq, m, y, W.rows(), nt);
  };
  auto quantized = [](const ops::packed_weights& W) { return ops::packed_weights::repacked(W.type()); };

  for (int64_t t = 0; t < m; ++t) w.embed(tokens[t], &x[std::size_t(t * E)]);

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const layer_weights& L = w.layers[std::size_t(l)];
    uint8_t* kv_layer = static_cast<uint8_t*>(kv.get()) +
                        std::size_t(l) * 2 * std::size_t(n_ctx * KV) * kv_elt(kv_f16);
    void* k_cache = kv_layer;
    void* v_cache = kv_layer + std::size_t(n_ctx * KV) * kv_elt(kv_f16);

    // attention block: xb = norm(x); q, k, v = xb Wq, xb Wk, xb Wv; rope(q, k)
    ops::rmsnorm_rows(kt, xb.data(), x.data(), L.attn_norm, m, E, c.rms_eps, nt);
    if (quantized(L.wq) || quantized(L.wk) || quantized(L.wv)) quantize(xb.data(), aq_embd);
    mm(L.wq, xb.data(), aq_embd, q.data());
    mm(L.wk, xb.data(), aq_embd, k.data());
    mm(L.wv, xb.data(), aq_embd, v.data());
    ops::rope_rows(kt, q.data(), m, E, c.n_head, hd, rope_cos.data(), rope_sin.data(), pos0, nt);
    ops::rope_rows(kt, k.data(), m, KV, c.n_head_kv, hd, rope_cos.data(), rope_sin.data(), pos0, nt);
    // append k, v to the cache at positions pos0 .. pos0+m-1
    const int64_t n_kv_head = c.n_head_kv;
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t h = 0; h < n_kv_head; ++h) {
        const std::size_t dst = std::size_t((h * n_ctx + pos0 + t) * hd), src = std::size_t(t * KV + h * hd);
        if (kv_f16) {
          auto* kc = static_cast<uint16_t*>(k_cache) + dst;
          auto* vc = static_cast<uint16_t*>(v_cache) + dst;
          for (int64_t i = 0; i < hd; ++i) {
            kc[i] = fp32_to_fp16(k[src + std::size_t(i)]);
            vc[i] = fp32_to_fp16(v[src + std::size_t(i)]);
          }
        } else {
          std::memcpy(static_cast<float*>(k_cache) + dst, &k[src], std::size_t(hd) * 4);
          std::memcpy(static_cast<float*>(v_cache) + dst, &v[src], std::size_t(hd) * 4);
        }
      }
    }
    const ops::attention_args aa{q.data(), k_cache, v_cache, kv_f16, hd, n_ctx * hd, pos0, m,
                                 c.n_head, c.n_head_kv, hd, att.data(), attn_scratch.data(), n_ctx};
    ops::attention(kt, aa, nt);
    if (quantized(L.wo)) quantize(att.data(), aq_embd);
    mm(L.wo, att.data(), aq_embd, xb.data());
    ops::add_inplace(kt, x.data(), xb.data(), m * E, nt);

    // feed-forward block: x += W_down (silu(xb W_gate) * (xb W_up)), xb = norm(x)
    ops::rmsnorm_rows(kt, xb.data(), x.data(), L.ffn_norm, m, E, c.rms_eps, nt);
    if (quantized(L.w_gate) || quantized(L.w_up)) quantize(xb.data(), aq_embd);
    mm(L.w_gate, xb.data(), aq_embd, hb.data());
    mm(L.w_up, xb.data(), aq_embd, hb2.data());
    ops::silu_mul(kt, hb.data(), hb.data(), hb2.data(), m * F, nt);
    if (quantized(L.w_down)) quantize(hb.data(), aq_ff);
    mm(L.w_down, hb.data(), aq_ff, xb.data());
    ops::add_inplace(kt, x.data(), xb.data(), m * E, nt);
  }

  if (embed_acc) {  // embeddings: the normalized final hidden state of every token, no logits
    ops::rmsnorm_rows(kt, xb.data(), x.data(), w.output_norm, m, E, c.rms_eps, nt);
    for (int64_t t = 0; t < m; ++t)
      for (int64_t i = 0; i < E; ++i) (*embed_acc)[std::size_t(i)] += xb[std::size_t(t * E + i)];
    n_past += m;
    return;
  }
  // final norm and logits: every token or only the last
  const int64_t first = all_logits ? 0 : m - 1, rows = m - first;
  ops::rmsnorm_rows(kt, xb.data(), &x[std::size_t(first * E)], w.output_norm, rows, E, c.rms_eps, nt);
  if (quantized(w.output)) ops::quantize_activations(kt, xb.data(), rows, aq_embd, nt);
  ops::matmul(kt, w.output, xb.data(), &aq_embd, rows, out_logits, c.n_vocab, nt);
  n_past += m;
}

void context_impl::check_tokens(std::span<const int32_t> tokens) const {
  const int64_t n = int64_t(tokens.size());
  if (n == 0) throw error(errc::invalid_argument, "eval: no tokens");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[std::size_t(i)] < 0 || tokens[std::size_t(i)] >= c.n_vocab)
      throw error(errc::invalid_argument, "eval: token " + std::to_string(tokens[std::size_t(i)]) +
                                              " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                                              std::to_string(c.n_vocab) + ")");
  }
}

std::vector<float> context_impl::embed(std::span<const int32_t> tokens) {
  check_tokens(tokens);
  const int64_t n = int64_t(tokens.size()), E = c.n_embd;
  if (n > n_ctx)
    throw error(errc::context_overflow, "embed: " + std::to_string(n) + " tokens do not fit the context of " +
                                            std::to_string(n_ctx));
  n_past = 0;
  std::vector<double> acc(static_cast<std::size_t>(E), 0.0);
  embed_acc = &acc;
  try {
    for (int64_t i = 0; i < n; i += n_batch) forward(tokens.data() + i, std::min(n_batch, n - i), logits.data(), false);
  } catch (...) {
    embed_acc = nullptr;
    throw;
  }
  embed_acc = nullptr;
  double norm = 0;
  for (double& v : acc) {
    v /= double(n);
    norm += v * v;
  }
  norm = std::sqrt(norm);
  std::vector<float> out(static_cast<std::size_t>(E));
  for (int64_t i = 0; i < E; ++i) out[std::size_t(i)] = norm > 0 ? float(acc[std::size_t(i)] / norm) : 0.0f;
  return out;
}

std::span<const float> context_impl::eval(std::span<const int32_t> tokens, bool all_logits) {
  check_tokens(tokens);
  const int64_t n = int64_t(tokens.size());
  if (n_past + n > n_ctx)
    throw error(errc::context_overflow, "eval: " + std::to_string(n) + " tokens after " +
                                            std::to_string(n_past) + " do not fit the context of " +
                                            std::to_string(n_ctx));
  if (all_logits && all.size() < std::size_t(n * c.n_vocab)) all.resize(std::size_t(n * c.n_vocab));
  const int64_t start = n_past;
  for (int64_t i = 0; i < n; i += n_batch) {
    if (abort && abort->load(std::memory_order_relaxed)) {
      n_past = start;  // as before the call: the chunks already run are forgotten
      throw error(errc::cancelled, "eval: cancelled after " + std::to_string(i) + " of " +
                                       std::to_string(n) + " tokens");
    }
    const int64_t m = std::min(n_batch, n - i);
    float* out = all_logits ? &all[std::size_t(i * c.n_vocab)] : logits.data();
    forward(tokens.data() + i, m, out, all_logits);
  }
  if (all_logits) return {all.data(), std::size_t(n * c.n_vocab)};
  return {logits.data(), logits.size()};
}

// Positions [n_keep + n_discard, n_past) move down by n_discard. V rows are copied; K rows were
// stored rotated for their old position p, and R(p - d) = R(-d) R(p), so one rotation by -d
// (the same rope kernel, a table for position -d) puts them where a fresh evaluation would.
void context_impl::shift(int64_t n_keep, int64_t n_discard) {
  if (n_keep < 0 || n_discard < 0 || n_keep + n_discard > n_past)
    throw error(errc::invalid_argument, "context shift: keep " + std::to_string(n_keep) + " and discard " +
                                            std::to_string(n_discard) + " of " + std::to_string(n_past) + " tokens");
  if (n_discard == 0) return;
  const int64_t hd = c.head_dim();
  std::vector<float> cs(static_cast<std::size_t>(hd)), sn(static_cast<std::size_t>(hd)), row(static_cast<std::size_t>(hd));
  ref::rope_table(cs.data(), sn.data(), hd, c.n_rot, -double(n_discard) * double(c.rope_freq_scale),
                  double(c.rope_freq_base));
  const int64_t first = n_keep + n_discard, n_move = n_past - first;
  const std::size_t elt = kv_elt(kv_f16), row_bytes = std::size_t(hd) * elt;
  const std::size_t head_bytes = std::size_t(n_ctx) * row_bytes, half = std::size_t(c.n_head_kv) * head_bytes;
  const int64_t units = c.n_layer * c.n_head_kv;  // (layer, kv head): independent
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(row) if (units > 1)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t l = u / c.n_head_kv, h = u % c.n_head_kv;
    uint8_t* k_head = static_cast<uint8_t*>(kv.get()) + std::size_t(l) * 2 * half + std::size_t(h) * head_bytes;
    uint8_t* v_head = k_head + half;
    // V rows of a head are contiguous: one move
    std::memmove(v_head + std::size_t(n_keep) * row_bytes, v_head + std::size_t(first) * row_bytes,
                 std::size_t(n_move) * row_bytes);
    for (int64_t j = 0; j < n_move; ++j) {  // ascending: destinations never overwrite unread rows
      const std::size_t src = std::size_t(first + j) * row_bytes, dst = std::size_t(n_keep + j) * row_bytes;
      if (kv_f16) {
        const auto* in = reinterpret_cast<const uint16_t*>(k_head + src);
        for (int64_t i = 0; i < hd; ++i) row[std::size_t(i)] = fp16_to_fp32(in[i]);
      } else {
        std::memcpy(row.data(), k_head + src, row_bytes);
      }
      kt.rope(row.data(), 1, hd, cs.data(), sn.data());
      if (kv_f16) {
        auto* out = reinterpret_cast<uint16_t*>(k_head + dst);
        for (int64_t i = 0; i < hd; ++i) out[i] = fp32_to_fp16(row[std::size_t(i)]);
      } else {
        std::memcpy(k_head + dst, row.data(), row_bytes);
      }
    }
  }
  n_past -= n_discard;
}

context::context(std::shared_ptr<const model> m, const context_params& p)
    : impl_(std::make_unique<context_impl>(std::move(m), p)) {}
context::~context() = default;
std::span<const float> context::eval(std::span<const int32_t> tokens, bool all_logits) {
  return impl_->eval(tokens, all_logits);
}
int64_t context::n_past() const noexcept { return impl_->n_past; }
int64_t context::n_ctx() const noexcept { return impl_->n_ctx; }
void context::clear() noexcept { impl_->n_past = 0; }
void context::truncate(int64_t n) {
  if (n < 0 || n > impl_->n_past)
    throw error(errc::invalid_argument, "context: cannot truncate " + std::to_string(impl_->n_past) +
                                            " tokens to " + std::to_string(n));
  impl_->n_past = n;
}
void context::shift(int64_t n_keep, int64_t n_discard) { impl_->shift(n_keep, n_discard); }
void context::set_abort_flag(const std::atomic<bool>* flag) noexcept { impl_->abort = flag; }
std::vector<float> context::embed(std::span<const int32_t> tokens) { return impl_->embed(tokens); }
const model& context::get_model() const noexcept { return *impl_->owner; }

}  // namespace qllm
