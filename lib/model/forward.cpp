// The Llama-2 forward pass over a batch of tokens, and the context that owns the KV cache.
//
// Shapes: M tokens per pass, E = n_embd, KV = kv_dim, F = n_ff, V = n_vocab.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include <sys/mman.h>

#include "model/model_impl.hpp"
#include "ops/matmul.hpp"
#include "ops/rows.hpp"
#include "qllm/error.hpp"
#include "qllm/resources.hpp"
#include "qllm/reference.hpp"

namespace qllm {

// One sequence's share of a forward pass: rows row0 .. row0+m-1 of the pass are its tokens at
// positions past[seq] .. past[seq]+m-1; `logits`: the pass computes its last row's logits.
struct segment {
  int32_t seq = 0;
  int64_t row0 = 0, m = 0;
  int64_t n_logits = 1;  // logits rows for the segment's last n_logits tokens (0 .. m)
};

class context_impl {
 public:
  context_impl(std::shared_ptr<const model> mp, const context_params& p, int n_seq = 1);
  std::span<const float> eval(std::span<const int32_t> tokens, bool all_logits);
  // One pass over the segments' m <= n_batch rows (tokens in row order). Logits go to out_logits,
  // one row per segment with `logits` set, in segment order, or (all_logits, one segment) one row
  // per token.
  void forward(const int32_t* tokens, std::span<const segment> segs, int64_t m, float* out_logits,
               bool all_logits);
  void shift(int32_t seq, int64_t n_keep, int64_t n_discard);
  std::vector<float> embed(std::span<const int32_t> tokens);
  void check_tokens(std::span<const int32_t> tokens) const;
  void allocate_buffers();  // RoPE tables, activations, scratch (throws std::bad_alloc)
  void rope_fill(int64_t n_pos);  // RoPE table rows [rope_filled, n_pos), if not yet there
  void* seq_kv(int32_t seq) const noexcept {
    return static_cast<uint8_t*>(kv.get()) + std::size_t(seq) * seq_kv_bytes;
  }
  std::vector<double>* embed_acc = nullptr;  // set by embed(): sum of final hidden states

  std::shared_ptr<const model> owner;
  const model_impl& w;
  const model_config& c;
  const kernels::kernel_table& kt;
  int64_t n_ctx, n_batch;
  int nt;
  bool kv_f16;
  int n_seq;
  std::vector<int64_t> past;  // tokens in each sequence's cache
  std::size_t seq_kv_bytes = 0;
  const std::atomic<bool>* abort = nullptr;  // checked between chunks of n_batch tokens

  // Anonymous pages mapped straight from the kernel: memory is committed as positions are used,
  // never up front (malloc could touch it all: MALLOC_PERTURB_, or a calloc that clears).
  class lazy_block {
   public:
    lazy_block() = default;
    explicit lazy_block(std::size_t bytes) : n_(std::max<std::size_t>(bytes, 1)) {
      p_ = ::mmap(nullptr, n_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p_ == MAP_FAILED) {
        p_ = nullptr;
        throw std::bad_alloc();
      }
    }
    lazy_block(lazy_block&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
    lazy_block& operator=(lazy_block&& o) noexcept {
      std::swap(p_, o.p_);
      std::swap(n_, o.n_);
      return *this;
    }
    ~lazy_block() {
      if (p_) ::munmap(p_, n_);
    }
    void* get() const noexcept { return p_; }
    float* floats() const noexcept { return static_cast<float*>(p_); }

   private:
    void* p_ = nullptr;
    std::size_t n_ = 0;
  };
  // Per sequence: [n_layer][2: k, v][n_head_kv][n_ctx][head_dim], f16 or f32: head-major, so the
  // rows one attention item reads are contiguous (row-major [n_ctx][KV] strided them by KV and
  // missed the TLB on every row)
  lazy_block kv;
  // Sized by n_ctx but committed as they are used: the allocation is not touched up front (a
  // window of millions of positions costs address space, not memory or time, until it fills)
  lazy_block rope_cos, rope_sin;  // [n_ctx][head_dim] floats, rows < rope_filled set
  int64_t rope_filled = 0;
  std::vector<float> x, xb, q, k, v, att;  // [M][E] (k, v: [M][KV])
  std::vector<float> hb, hb2;              // [M][F]
  lazy_block attn_scratch;  // ops::attention_scratch_floats(nt, n_ctx) floats, written before read
  std::vector<float> logits, all;          // [n_seq][V], [tokens][V]
  std::vector<ops::attention_args> attn_args;  // [n_seq]
  std::vector<int32_t> pass_tokens;            // [M]: a batch's pass, gathered
  std::vector<segment> segs;                   // [n_seq]
  ops::act_q8 aq_embd, aq_ff;              // quantized activations, [M][E/32], [M][F/32]
};

namespace {
std::size_t kv_elt(bool f16) { return f16 ? 2 : 4; }
}  // namespace

context_impl::context_impl(std::shared_ptr<const model> mp, const context_params& p, int n_seq_)
    : owner(std::move(mp)),
      w(owner->impl()),
      c(w.cfg),
      kt(*w.kt),
      n_ctx(p.n_ctx > 0 ? p.n_ctx : c.n_ctx_train),
      n_batch(p.n_batch),
      nt(p.n_threads > 0 ? p.n_threads : ops::default_threads()),
      kv_f16(p.kv == kv_type::f16),
      n_seq(n_seq_) {
  if (n_seq < 1 || n_seq > 1024)
    throw error(errc::invalid_argument, "batch: n_seq " + std::to_string(n_seq) + " out of range [1, 1024]");
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
  seq_kv_bytes = (std::size_t(c.n_layer) * 2 * std::size_t(n_ctx) * std::size_t(KV) * kv_elt(kv_f16) + 63) / 64 * 64;
  const std::size_t kv_bytes = seq_kv_bytes * std::size_t(n_seq);
  // Everything this context will hold, checked against what the process can have before any of
  // it is allocated: a window that cannot fit is an error with the numbers, not a crash or swap.
  const std::size_t rope_bytes = 2 * std::size_t(n_ctx * hd) * sizeof(float);
  const std::size_t scratch_bytes =
      sizeof(float) * (std::size_t(M) * std::size_t(4 * E + 2 * KV + 2 * F) +
                       ops::attention_scratch_floats(nt, n_ctx) + std::size_t(c.n_vocab) * std::size_t(n_seq));
  if (double(c.n_layer) * 2 * double(n_ctx) * double(KV) * 4 * double(n_seq) > 0x1p60)
    throw error(errc::out_of_memory, "context: a KV cache of " + std::to_string(n_seq) + " x " +
                                         std::to_string(n_ctx) + " positions of this model cannot be addressed");
  const uint64_t need = uint64_t(kv_bytes) + rope_bytes + scratch_bytes;
  if (const uint64_t have = memory_available_bytes(); have > 0 && need > have)
    throw error(errc::out_of_memory,
                "context: n_ctx " + std::to_string(n_ctx) + " needs " + format_bytes(need) + " (KV cache " +
                    format_bytes(kv_bytes) + ": " + (n_seq > 1 ? std::to_string(n_seq) + " sequences x " : std::string()) +
                    std::to_string(c.n_layer) + " layers x 2 x " +
                    std::to_string(n_ctx) + " positions x " + std::to_string(KV) + " x " +
                    std::to_string(kv_elt(kv_f16)) + " bytes), but this process can have " +
                    format_bytes(have) + " (physical memory, cgroup limit). Lower n_ctx" +
                    (kv_f16 ? "" : " or use an f16 KV cache"));
  try {
    kv = lazy_block(kv_bytes);  // untouched pages cost no RSS
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "context: cannot allocate the KV cache (" + format_bytes(kv_bytes) +
                                         " for n_ctx " + std::to_string(n_ctx) + ")");
  }
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
  rope_cos = lazy_block(std::size_t(n_ctx * hd) * sizeof(float));
  rope_sin = lazy_block(std::size_t(n_ctx * hd) * sizeof(float));
  rope_filled = 0;
  x.resize(std::size_t(M * E));
  xb.resize(std::size_t(M * E));
  q.resize(std::size_t(M * E));
  att.resize(std::size_t(M * E));
  k.resize(std::size_t(M * KV));
  v.resize(std::size_t(M * KV));
  hb.resize(std::size_t(M * F));
  hb2.resize(std::size_t(M * F));
  attn_scratch = lazy_block(ops::attention_scratch_floats(nt, n_ctx) * sizeof(float));
  logits.resize(std::size_t(c.n_vocab) * std::size_t(n_seq));
  past.assign(std::size_t(n_seq), 0);
  attn_args.reserve(std::size_t(n_seq));
  segs.reserve(std::size_t(n_seq));
  pass_tokens.resize(std::size_t(M));
  if (E % qk == 0) aq_embd = ops::act_q8(M, E, w.k_quants);
  if (F % qk == 0) aq_ff = ops::act_q8(M, F, w.k_quants);
}

void context_impl::rope_fill(int64_t n_pos) {
  const int64_t hd = c.head_dim();
  for (; rope_filled < n_pos; ++rope_filled)
    ref::rope_table(rope_cos.floats() + rope_filled * hd, rope_sin.floats() + rope_filled * hd, hd, c.n_rot,
                    double(rope_filled) * double(c.rope_freq_scale), double(c.rope_freq_base),
                    c.rope_freq_factors.empty() ? nullptr : c.rope_freq_factors.data());
}

void context_impl::forward(const int32_t* tokens, std::span<const segment> sg, int64_t m, float* out_logits,
                           bool all_logits) {
  const int64_t E = c.n_embd, KV = c.kv_dim(), F = c.n_ff, hd = c.head_dim();
  // y[m][rows] = W x, quantizing x once for all matrices that share it, in the forms they read
  // (Q8_0, Q8_K, both; none for float weights)
  auto quantize = [&](const float* in, ops::act_q8& aq, std::initializer_list<const ops::packed_weights*> ws) {
    unsigned forms = 0;
    for (const ops::packed_weights* W : ws) forms |= ops::act_form_for(W->type());
    if (forms) ops::quantize_activations(kt, in, m, aq, nt, forms);
  };
  auto mm = [&](const ops::packed_weights& W, const float* in, const ops::act_q8& aq, float* y) {
    ops::matmul(kt, W, in, &aq, m, y, W.rows(), nt);
  };

  for (int64_t t = 0; t < m; ++t) w.embed(tokens[t], &x[std::size_t(t * E)]);
  int64_t n_pos = 0;  // the positions this pass rotates: their table rows, once each
  for (const segment& s : sg) n_pos = std::max(n_pos, past[std::size_t(s.seq)] + s.m);
  rope_fill(n_pos);

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const layer_weights& L = w.layers[std::size_t(l)];
    const std::size_t layer_off = std::size_t(l) * 2 * std::size_t(n_ctx * KV) * kv_elt(kv_f16);
    const std::size_t v_off = std::size_t(n_ctx * KV) * kv_elt(kv_f16);

    // attention block: xb = norm(x); q, k, v = xb Wq, xb Wk, xb Wv; rope(q, k)
    ops::rmsnorm_rows(kt, xb.data(), x.data(), L.attn_norm, m, E, c.rms_eps, nt);
    quantize(xb.data(), aq_embd, {&L.wq, &L.wk, &L.wv});
    mm(L.wq, xb.data(), aq_embd, q.data());
    mm(L.wk, xb.data(), aq_embd, k.data());
    mm(L.wv, xb.data(), aq_embd, v.data());
    // Rotation and the cache append of every segment. A step of several streams: one parallel
    // loop over the segments (distinct sequences, batch_context::eval checks: disjoint rows and
    // caches), each segment's rows on its thread (a prompt chunk among them too: its rope is
    // small beside the pass's matmuls). One segment: called directly, its rows in parallel
    // (inside even a one-thread region, rope_rows' region would be a nested team: new threads
    // per call, as libgomp does not pool those).
    const auto layer_kv = [&](const segment& s) { return static_cast<uint8_t*>(seq_kv(s.seq)) + layer_off; };
    const auto rotate_append = [&](const segment& s, int inner) {
      const int64_t pos0 = past[std::size_t(s.seq)], r0 = s.row0;
      ops::rope_rows(kt, &q[std::size_t(r0 * E)], s.m, E, c.n_head, hd, rope_cos.floats(), rope_sin.floats(), pos0,
                     inner);
      ops::rope_rows(kt, &k[std::size_t(r0 * KV)], s.m, KV, c.n_head_kv, hd, rope_cos.floats(), rope_sin.floats(), pos0,
                     inner);
      uint8_t* kv_layer = layer_kv(s);
      void* k_cache = kv_layer;
      void* v_cache = kv_layer + v_off;
      // append k, v to the sequence's cache at positions pos0 .. pos0+m-1
      for (int64_t t = 0; t < s.m; ++t) {
        for (int64_t h = 0; h < c.n_head_kv; ++h) {
          const std::size_t dst = std::size_t((h * n_ctx + pos0 + t) * hd), src = std::size_t((r0 + t) * KV + h * hd);
          if (kv_f16) {
            kt.to_f16(static_cast<uint16_t*>(k_cache) + dst, &k[src], hd);
            kt.to_f16(static_cast<uint16_t*>(v_cache) + dst, &v[src], hd);
          } else {
            std::memcpy(static_cast<float*>(k_cache) + dst, &k[src], std::size_t(hd) * 4);
            std::memcpy(static_cast<float*>(v_cache) + dst, &v[src], std::size_t(hd) * 4);
          }
        }
      }
    };
    const int64_t n_sg = int64_t(sg.size());
    if (n_sg == 1) {
      rotate_append(sg[0], nt);
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int64_t i = 0; i < n_sg; ++i) rotate_append(sg[std::size_t(i)], 1);
    }
    attn_args.clear();
    for (const segment& s : sg) {
      const uint8_t* kv_layer = layer_kv(s);
      attn_args.push_back(ops::attention_args{&q[std::size_t(s.row0 * E)], kv_layer, kv_layer + v_off, kv_f16, hd,
                                              n_ctx * hd, past[std::size_t(s.seq)], s.m, c.n_head, c.n_head_kv,
                                              hd, &att[std::size_t(s.row0 * E)], attn_scratch.floats(), n_ctx});
    }
    ops::attention(kt, std::span<const ops::attention_args>(attn_args), nt);
    quantize(att.data(), aq_embd, {&L.wo});
    mm(L.wo, att.data(), aq_embd, xb.data());
    ops::add_inplace(kt, x.data(), xb.data(), m * E, nt);

    // feed-forward block: x += W_down (silu(xb W_gate) * (xb W_up)), xb = norm(x)
    ops::rmsnorm_rows(kt, xb.data(), x.data(), L.ffn_norm, m, E, c.rms_eps, nt);
    quantize(xb.data(), aq_embd, {&L.w_gate, &L.w_up});
    mm(L.w_gate, xb.data(), aq_embd, hb.data());
    mm(L.w_up, xb.data(), aq_embd, hb2.data());
    ops::silu_mul(kt, hb.data(), hb.data(), hb2.data(), m * F, nt);
    quantize(hb.data(), aq_ff, {&L.w_down});
    mm(L.w_down, hb.data(), aq_ff, xb.data());
    ops::add_inplace(kt, x.data(), xb.data(), m * E, nt);
  }

  if (embed_acc) {  // embeddings: the normalized final hidden state of every token, no logits
    ops::rmsnorm_rows(kt, xb.data(), x.data(), w.output_norm, m, E, c.rms_eps, nt);
    for (int64_t t = 0; t < m; ++t)
      for (int64_t i = 0; i < E; ++i) (*embed_acc)[std::size_t(i)] += xb[std::size_t(t * E + i)];
  } else {
    // final norm and logits: every token (all_logits) or the last of each segment that asks
    int64_t rows = 0;
    const float* in = x.data();
    if (all_logits) {
      rows = m;
    } else if (sg.size() == 1) {
      rows = sg[0].n_logits;
      in = &x[std::size_t((sg[0].row0 + sg[0].m - rows) * E)];
    } else {
      for (const segment& s : sg) {  // gather the rows into att (free until the next layer)
        if (s.n_logits == 0) continue;
        std::memcpy(&att[std::size_t(rows * E)], &x[std::size_t((s.row0 + s.m - s.n_logits) * E)],
                    std::size_t(s.n_logits * E) * 4);
        rows += s.n_logits;
      }
      in = att.data();
    }
    if (rows > 0) {
      ops::rmsnorm_rows(kt, xb.data(), in, w.output_norm, rows, E, c.rms_eps, nt);
      if (const unsigned f = ops::act_form_for(w.output.type()))
        ops::quantize_activations(kt, xb.data(), rows, aq_embd, nt, f);
      ops::matmul(kt, w.output, xb.data(), &aq_embd, rows, out_logits, c.n_vocab, nt);
    }
  }
  for (const segment& s : sg) past[std::size_t(s.seq)] += s.m;
}

void context_impl::check_tokens(std::span<const int32_t> tokens) const {
  if (tokens.size() > std::size_t(n_ctx))  // more than any window: before the size is used as a count
    throw error(errc::context_overflow, "eval: " + std::to_string(tokens.size()) + " tokens do not fit the context of " +
                                            std::to_string(n_ctx));
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
  past[0] = 0;
  std::vector<double> acc(static_cast<std::size_t>(E), 0.0);
  embed_acc = &acc;
  try {
    for (int64_t i = 0; i < n; i += n_batch) {
      const segment sg{0, 0, std::min(n_batch, n - i), 0};
      forward(tokens.data() + i, std::span<const segment>(&sg, 1), sg.m, logits.data(), false);
    }
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
  int64_t& n_past = past[0];
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
    const segment sg{0, 0, m, 1};
    forward(tokens.data() + i, std::span<const segment>(&sg, 1), m, out, all_logits);
  }
  if (all_logits) return {all.data(), std::size_t(n * c.n_vocab)};
  return {logits.data(), std::size_t(c.n_vocab)};
}

// Positions [n_keep + n_discard, n_past) move down by n_discard. V rows are copied; K rows were
// stored rotated for their old position p, and R(p - d) = R(-d) R(p), so one rotation by -d
// (the same rope kernel, a table for position -d) puts them where a fresh evaluation would.
void context_impl::shift(int32_t seq, int64_t n_keep, int64_t n_discard) {
  int64_t& n_past = past[std::size_t(seq)];
  if (n_keep < 0 || n_discard < 0 || n_keep + n_discard > n_past)
    throw error(errc::invalid_argument, "context shift: keep " + std::to_string(n_keep) + " and discard " +
                                            std::to_string(n_discard) + " of " + std::to_string(n_past) + " tokens");
  if (n_discard == 0) return;
  const int64_t hd = c.head_dim();
  std::vector<float> cs(static_cast<std::size_t>(hd)), sn(static_cast<std::size_t>(hd)), row(static_cast<std::size_t>(hd));
  ref::rope_table(cs.data(), sn.data(), hd, c.n_rot, -double(n_discard) * double(c.rope_freq_scale),
                  double(c.rope_freq_base), c.rope_freq_factors.empty() ? nullptr : c.rope_freq_factors.data());
  const int64_t first = n_keep + n_discard, n_move = n_past - first;
  const std::size_t elt = kv_elt(kv_f16), row_bytes = std::size_t(hd) * elt;
  const std::size_t head_bytes = std::size_t(n_ctx) * row_bytes, half = std::size_t(c.n_head_kv) * head_bytes;
  const int64_t units = c.n_layer * c.n_head_kv;  // (layer, kv head): independent
#pragma omp parallel for schedule(static) num_threads(nt) firstprivate(row) if (units > 1)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t l = u / c.n_head_kv, h = u % c.n_head_kv;
    uint8_t* k_head = static_cast<uint8_t*>(seq_kv(seq)) + std::size_t(l) * 2 * half + std::size_t(h) * head_bytes;
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
        kt.to_f16(out, row.data(), hd);
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
int64_t context::n_past() const noexcept { return impl_->past[0]; }
int64_t context::n_ctx() const noexcept { return impl_->n_ctx; }
void context::clear() noexcept { impl_->past[0] = 0; }
void context::truncate(int64_t n) {
  if (n < 0 || n > impl_->past[0])
    throw error(errc::invalid_argument, "context: cannot truncate " + std::to_string(impl_->past[0]) +
                                            " tokens to " + std::to_string(n));
  impl_->past[0] = n;
}
void context::shift(int64_t n_keep, int64_t n_discard) { impl_->shift(0, n_keep, n_discard); }
void context::set_abort_flag(const std::atomic<bool>* flag) noexcept { impl_->abort = flag; }
std::vector<float> context::embed(std::span<const int32_t> tokens) { return impl_->embed(tokens); }
const model& context::get_model() const noexcept { return *impl_->owner; }

// ---- batch_context: many sequences in shared forward passes ----

batch_context::batch_context(std::shared_ptr<const model> m, const context_params& p, int n_seq)
    : impl_(std::make_unique<context_impl>(std::move(m), p, n_seq)) {}
batch_context::~batch_context() = default;

void batch_context::check_seq(int32_t seq, const char* what) const {
  if (seq < 0 || seq >= impl_->n_seq)
    throw error(errc::invalid_argument, std::string(what) + ": sequence " + std::to_string(seq) +
                                            " out of range [0, " + std::to_string(impl_->n_seq) + ")");
}

void batch_context::eval(std::span<const entry> entries) {
  context_impl& ci = *impl_;
  if (entries.empty()) throw error(errc::invalid_argument, "batch eval: no entries");
  if (entries.size() > std::size_t(ci.n_seq))
    throw error(errc::invalid_argument, "batch eval: " + std::to_string(entries.size()) + " entries for " +
                                            std::to_string(ci.n_seq) + " sequences (one entry per sequence)");
  logit_row_.clear();  // a failed eval leaves no logits behind
  // Everything checked before any state changes.
  seen_.assign(std::size_t(ci.n_seq), 0);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const entry& e = entries[i];
    check_seq(e.seq, "batch eval");
    if (seen_[std::size_t(e.seq)]++)
      throw error(errc::invalid_argument, "batch eval: sequence " + std::to_string(e.seq) + " appears twice");
    const int64_t past = ci.past[std::size_t(e.seq)];
    if (e.tokens.size() > std::size_t(ci.n_ctx - past))  // before any arithmetic on the size
      throw error(errc::context_overflow, "batch eval: sequence " + std::to_string(e.seq) + ": " +
                                              std::to_string(e.tokens.size()) + " tokens after " +
                                              std::to_string(past) + " do not fit the context of " +
                                              std::to_string(ci.n_ctx));
    try {
      ci.check_tokens(e.tokens);
    } catch (const error& x) {
      throw error(x.code(), "sequence " + std::to_string(e.seq) + ": " + x.what());
    }
    const int64_t n = int64_t(e.tokens.size());
    if (past + n > ci.n_ctx)
      throw error(errc::context_overflow, "batch eval: sequence " + std::to_string(e.seq) + ": " +
                                              std::to_string(n) + " tokens after " + std::to_string(past) +
                                              " do not fit the context of " + std::to_string(ci.n_ctx));
  }
  logit_row_.assign(entries.size(), -1);
  logit_rows_.assign(entries.size(), 0);
  logit_tokens_.assign(entries.size(), 0);
  int64_t n_rows = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const int64_t rows = entries[i].all_logits ? int64_t(entries[i].tokens.size()) : entries[i].logits ? 1 : 0;
    if (rows) logit_row_[i] = n_rows;
    logit_rows_[i] = rows;
    logit_tokens_[i] = int64_t(entries[i].tokens.size());
    n_rows += rows;
  }
  const std::size_t V = std::size_t(ci.c.n_vocab);
  if (std::size_t(n_rows) * V > ci.logits.size()) ci.logits.resize(std::size_t(n_rows) * V);  // drafts: grows once
  const std::vector<int64_t> start = ci.past;
  // Passes of at most n_batch tokens, filled with the entries in order (an entry may straddle two).
  std::size_t e = 0;
  int64_t off = 0;  // tokens of entries[e] already run
  int64_t rows_done = 0;
  while (e < entries.size()) {
    if (ci.abort && ci.abort->load(std::memory_order_relaxed)) {
      ci.past = start;  // as before the call
      throw error(errc::cancelled, "batch eval: cancelled");
    }
    ci.segs.clear();
    int64_t m = 0;
    const int64_t rows0 = rows_done;
    while (e < entries.size() && m < ci.n_batch) {
      const entry& en = entries[e];
      const int64_t n = int64_t(en.tokens.size());
      const int64_t take = std::min(n - off, ci.n_batch - m);
      std::memcpy(&ci.pass_tokens[std::size_t(m)], en.tokens.data() + off, std::size_t(take) * sizeof(int32_t));
      const bool last = off + take == n;
      const int64_t rows = en.all_logits ? take : (last && en.logits ? 1 : 0);
      ci.segs.push_back(segment{en.seq, m, take, rows});
      rows_done += rows;
      m += take;
      off += take;
      if (last) {
        ++e;
        off = 0;
      }
    }
    ci.forward(ci.pass_tokens.data(), std::span<const segment>(ci.segs), m,
               &ci.logits[std::size_t(rows0 * ci.c.n_vocab)], false);
  }
}

std::span<const float> batch_context::logits(std::size_t i) const {
  if (i >= logit_row_.size() || logit_row_[i] < 0)
    throw error(errc::invalid_argument, "batch: entry " + std::to_string(i) + " of the last eval has no logits");
  return logits(i, std::size_t(logit_tokens_[i] - 1));
}

std::span<const float> batch_context::logits(std::size_t i, std::size_t j) const {
  // rows hold the entry's last logit_rows_[i] tokens
  if (i >= logit_row_.size() || logit_row_[i] < 0 || j >= std::size_t(logit_tokens_[i]) ||
      j < std::size_t(logit_tokens_[i] - logit_rows_[i]))
    throw error(errc::invalid_argument, "batch: entry " + std::to_string(i) + " of the last eval has no logits for token " +
                                            std::to_string(j));
  const std::size_t V = std::size_t(impl_->c.n_vocab);
  const std::size_t row = std::size_t(logit_row_[i]) + j - std::size_t(logit_tokens_[i] - logit_rows_[i]);
  return {&impl_->logits[row * V], V};
}

int batch_context::n_seq() const noexcept { return impl_->n_seq; }
int64_t batch_context::n_ctx() const noexcept { return impl_->n_ctx; }
int64_t batch_context::n_batch() const noexcept { return impl_->n_batch; }
int64_t batch_context::n_past(int32_t seq) const {
  check_seq(seq, "batch");
  return impl_->past[std::size_t(seq)];
}
void batch_context::clear(int32_t seq) {
  check_seq(seq, "batch clear");
  impl_->past[std::size_t(seq)] = 0;
}
void batch_context::truncate(int32_t seq, int64_t n) {
  check_seq(seq, "batch truncate");
  int64_t& past = impl_->past[std::size_t(seq)];
  if (n < 0 || n > past)
    throw error(errc::invalid_argument, "batch: cannot truncate sequence " + std::to_string(seq) + " of " +
                                            std::to_string(past) + " tokens to " + std::to_string(n));
  past = n;
}
void batch_context::shift(int32_t seq, int64_t n_keep, int64_t n_discard) {
  check_seq(seq, "batch shift");
  impl_->shift(seq, n_keep, n_discard);
}
void batch_context::set_abort_flag(const std::atomic<bool>* flag) noexcept { impl_->abort = flag; }
const model& batch_context::get_model() const noexcept { return *impl_->owner; }

}  // namespace qllm
