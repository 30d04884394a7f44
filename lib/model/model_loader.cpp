// Loads a Llama GGUF: config from metadata, weights bound by name with shapes checked, quantized
// matrices repacked into one allocation and their mapped pages released.
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "omp_compat.hpp"
#include "model/model_impl.hpp"
#include "model/weight_cache.hpp"
#include "ops/rows.hpp"
#include "qllm/error.hpp"
#include "qllm/quantize.hpp"
#include "qllm/resources.hpp"
#include "qllm/reference.hpp"
#include "qllm/version.hpp"

namespace qllm {

model_impl::mapping::~mapping() {
  if (p_) munmap(p_, n_);
}

void model_impl::embed(int32_t token, float* out) const noexcept {
  // embd_type is one matrix_type_ok() accepted, all of which dequantize_row reads
  ref::dequantize_row(embd_type, embd + std::size_t(token) * embd_row_bytes, out, cfg.n_embd);
}

namespace {

[[noreturn]] void bad(const std::string& what) { throw error(errc::bad_format, "model: " + what); }

int64_t get_dim(const gguf::file& f, const std::string& key, int64_t max) {
  if (!f.find(key)) bad("missing metadata key '" + key + "'");
  const uint64_t v = f.get_uint(key);
  if (v == 0 || v > uint64_t(max))
    bad("metadata '" + key + "' = " + std::to_string(v) + " is out of range [1, " + std::to_string(max) + "]");
  return int64_t(v);
}

// Linear scaling is implemented, and llama3 through rope_freqs.weight; any other RoPE scaling type
// is refused by name, never ignored.
float read_rope_scaling(const gguf::file& f) {
  const char* type_key = "llama.rope.scaling.type";
  const char* factor_key = "llama.rope.scaling.factor";
  const char* old_key = "llama.rope.scale_linear";
  std::string type = f.find(type_key) ? f.get_string(type_key) : "";
  double factor = 0;  // 0: not given
  if (f.find(old_key)) factor = f.get_float(old_key);
  if (f.find(factor_key)) factor = f.get_float(factor_key);  // the newer key wins, as in llama.cpp
  if (type.empty()) type = factor != 0 ? "linear" : "none";
  if (type == "none") return 1.0f;
  // Llama-3.1's scaling lives in the rope_freqs.weight tensor (llama.cpp's converter writes no type
  // for it); a file that names the type must carry the tensor, or its scaling would be lost
  if (type == "llama3") {
    if (!f.find_tensor("rope_freqs.weight"))
      throw error(errc::unsupported, "model: RoPE scaling type 'llama3' without the tensor rope_freqs.weight is "
                                     "not supported (qllm reads llama3 scaling from that tensor)");
    return 1.0f;
  }
  if (type != "linear")
    throw error(errc::unsupported, "model: RoPE scaling type '" + type +
                                       "' is not supported (qllm implements 'linear', and 'llama3' through rope_freqs.weight)");
  if (factor == 0) return 1.0f;  // as llama.cpp: a zero factor means unscaled
  if (!std::isfinite(factor) || factor < 1.0 / 1024 || factor > 1024)
  {
    char num[32];
    std::snprintf(num, sizeof num, "%g", factor);
    bad("RoPE scaling factor " + std::string(num) + " is out of range (1/1024 .. 1024)");
  }
  return float(1.0 / factor);
}

model_config read_config(const gguf::file& f) {
  if (!f.find("general.architecture")) bad("missing metadata key 'general.architecture'");
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama")
    throw error(errc::unsupported, "model: architecture '" + arch + "' is not supported (only llama)");
  model_config c;
  c.n_embd = get_dim(f, "llama.embedding_length", 1 << 16);
  c.n_layer = get_dim(f, "llama.block_count", 1 << 12);
  c.n_ff = get_dim(f, "llama.feed_forward_length", 1 << 18);
  c.n_head = get_dim(f, "llama.attention.head_count", 1 << 12);
  c.n_ctx_train = get_dim(f, "llama.context_length", 1 << 24);
  c.n_head_kv = f.find("llama.attention.head_count_kv")
                    ? get_dim(f, "llama.attention.head_count_kv", 1 << 12)
                    : c.n_head;
  if (c.n_embd % c.n_head != 0)
    bad("embedding_length " + std::to_string(c.n_embd) + " is not a multiple of head_count " + std::to_string(c.n_head));
  if (c.n_head % c.n_head_kv != 0)
    bad("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " + std::to_string(c.n_head_kv));
  if (c.head_dim() % 2 != 0) bad("head dimension " + std::to_string(c.head_dim()) + " is odd");
  c.n_rot = f.find("llama.rope.dimension_count") ? get_dim(f, "llama.rope.dimension_count", 1 << 16)
                                                  : c.head_dim();
  if (c.n_rot > c.head_dim() || c.n_rot % 2 != 0)
    bad("rope.dimension_count " + std::to_string(c.n_rot) + " must be even and at most the head dimension " + std::to_string(c.head_dim()));
  if (!f.find("llama.attention.layer_norm_rms_epsilon"))
    bad("missing metadata key 'llama.attention.layer_norm_rms_epsilon'");
  c.rms_eps = float(f.get_float("llama.attention.layer_norm_rms_epsilon"));
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f)) bad("layer_norm_rms_epsilon out of range");
  if (f.find("llama.rope.freq_base")) c.rope_freq_base = float(f.get_float("llama.rope.freq_base"));
  if (!(c.rope_freq_base > 1.0f) || !std::isfinite(c.rope_freq_base)) bad("rope.freq_base must be finite and > 1");
  c.rope_freq_scale = read_rope_scaling(f);
  return c;
}

const gguf::tensor_info& need(const gguf::file& f, const std::string& name, int64_t ne0, int64_t ne1) {
  const gguf::tensor_info* t = f.find_tensor(name);
  if (!t) bad("missing tensor '" + name + "'");
  const bool vec = ne1 == 0;
  const bool ok = vec ? (t->ne.size() == 1 && t->ne[0] == ne0)
                      : (t->ne.size() == 2 && t->ne[0] == ne0 && t->ne[1] == ne1);
  if (!ok) {
    std::string got;
    for (int64_t d : t->ne) got += (got.empty() ? "" : ", ") + std::to_string(d);
    bad("tensor '" + name + "' has shape [" + got + "], expected [" + std::to_string(ne0) +
        (vec ? "" : ", " + std::to_string(ne1)) + "]");
  }
  return *t;
}

bool matrix_type_ok(ggml_type t) {
  return t == ggml_type::q4_0 || t == ggml_type::q8_0 || ops::packed_weights::k_quant(t) ||
         t == ggml_type::f16 || t == ggml_type::bf16 || t == ggml_type::f32 || converted_at_load(t);
}

}  // namespace

// "Q4_K_M: 193 q4_k, 65 f32, 33 q6_k"
static std::string describe_mix(const gguf::file& f) {
  std::map<std::string, int> count;
  for (const auto& t : f.tensors()) count[gguf::type_name(t.type)]++;
  std::vector<std::pair<int, std::string>> v;
  for (const auto& [name, n] : count) v.emplace_back(-n, name);
  std::sort(v.begin(), v.end());
  std::string s;
  try {  // a file type qllm does not know (or of another value type) names no scheme
    const std::string name = quant::file_type_name(uint32_t(f.get_uint("general.file_type", 1u << 31)));
    if (!name.empty()) s = name + ": ";
  } catch (const error&) {
  }
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(-v[i].first) + " " + v[i].second;
  return s;
}

bool converted_at_load(ggml_type t) noexcept {
  return t == ggml_type::q4_1 || t == ggml_type::q5_0 || t == ggml_type::q5_1 || t == ggml_type::q2_k ||
         t == ggml_type::q3_k;
}

namespace {

class loader {
 public:
  loader(model_impl& m, const model_options& o) : m_(m), opt_(o) {}

  // Vectors (norms) are copied, f16/bf16 converted, so that nothing small keeps the mapping.
  const float* vec(const gguf::tensor_info& t) {
    const uint8_t* p = m_.file->tensor_data(t);
    const int64_t n = t.ne[0];
    if (t.type == ggml_type::f32) {
      auto& buf = m_.owned_f32.emplace_back(new float[std::size_t(n)]);
      std::memcpy(buf.get(), p, std::size_t(n) * sizeof(float));
      return buf.get();
    }
    if (t.type != ggml_type::f16 && t.type != ggml_type::bf16)
      throw error(errc::unsupported, "model: tensor '" + t.name + "' has type " +
                                         gguf::type_name(t.type) + "; norms must be f32, f16 or bf16");
    auto& buf = m_.owned_f32.emplace_back(new float[std::size_t(n)]);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      buf[std::size_t(i)] = t.type == ggml_type::f16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
    }
    return buf.get();
  }

  // The type a matrix is stored in for the kernels.
  ggml_type target(const gguf::tensor_info& t) const {
    if (!matrix_type_ok(t.type))
      throw error(errc::unsupported, "model: tensor '" + t.name + "' has type " +
                                         gguf::type_name(t.type) +
                                         ", which qllm cannot run (q4_0, q8_0, q4_k, q5_k, q6_k, f16, bf16, f32; "
                                         "q4_1, q5_0, q5_1, q2_k, q3_k converted to q8_0)");
    if (converted_at_load(t.type)) return ggml_type::q8_0;  // no kernels of their own yet
    if (opt_.quantize_float_weights && !ops::packed_weights::repacked(t.type)) return ggml_type::q8_0;
    if (t.type == ggml_type::bf16) return ggml_type::f32;
    return t.type;
  }

  std::size_t arena_bytes(const gguf::tensor_info& t) const {
    return (ops::packed_weights::packed_size(target(t), t.ne[1], t.ne[0]) + 63) / 64 * 64;
  }

  // Whether this matrix is read in place from the file's mapping (f16/f32 kept as stored).
  bool in_place(const gguf::tensor_info& t) const {
    const ggml_type tt = target(t);
    return tt == t.type && !ops::packed_weights::repacked(tt);
  }

  // Where repacked matrices go: `write` (an arena to fill) or, with a cache hit, `cached` (an
  // arena already filled: matrices become views of it, their source bytes are never read).
  void set_arena(uint8_t* write, const uint8_t* cached) {
    write_ = write;
    cached_ = cached;
  }

  // The matrix at `offset` of the arena (advanced past it when it is repacked).
  ops::packed_weights matrix(const gguf::tensor_info& t, std::size_t& offset, bool release) {
    const int64_t k = t.ne[0], n = t.ne[1];
    const ggml_type tt = target(t);
    if (ops::packed_weights::k_quant(tt)) m_.k_quants = true;
    if (cached_ && ops::packed_weights::repacked(tt)) {
      ops::packed_weights w = ops::packed_weights::view(tt, n, k, cached_ + offset);
      offset += arena_bytes(t);
      m_.weight_bytes += w.bytes();
      return w;
    }
    const uint8_t* src = m_.file->tensor_data(t);
    const int nt = opt_.n_threads > 0 ? opt_.n_threads : ops::default_threads();
    auto pack = [&](const void* from) {
      try {
        return ops::packed_weights(tt, from, n, k, nt, ops::packed_weights::repacked(tt) ? write_ + offset : nullptr);
      } catch (const error& e) {
        throw error(e.code(), "model: tensor '" + t.name + "': " + e.what());
      }
    };
    if (tt == t.type) {
      ops::packed_weights w = pack(src);
      offset += arena_bytes(t);
      if (release && ops::packed_weights::repacked(tt)) m_.file->release(src, t.bytes);
      m_.weight_bytes += w.bytes();
      return w;
    }
    // conversion: to f32 (bf16 source) or to Q8_0 (quantize_float_weights, or a type without
    // kernels: dequantized row by row, then quantized)
    std::unique_ptr<float[]> rows(new float[std::size_t(n * k)]);
    const std::size_t row_bytes = t.bytes / std::size_t(n);
    int64_t bad = 0;  // values that are infinite or NaN
    float amax = 0.0f;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(+ : bad) reduction(max : amax)
    for (int64_t r = 0; r < n; ++r) {
      float* row = rows.get() + r * k;
      ref::dequantize_row(t.type, src + std::size_t(r) * row_bytes, row, k);
      for (int64_t i = 0; i < k; ++i) {
        bad += !std::isfinite(row[i]);
        if (std::isfinite(row[i])) amax = std::max(amax, std::fabs(row[i]));
      }
    }
    if (bad)
      throw error(errc::bad_format, "model: tensor '" + t.name + "' holds " + std::to_string(bad) +
                                        " infinite or NaN values (a block scale is)");
    if (tt == ggml_type::q8_0 && amax / 127.0f > 65504.0f) {  // Q8_0's fp16 scale would overflow
      char v[32];
      std::snprintf(v, sizeof v, "%g", double(amax));
      throw error(errc::unsupported, "model: tensor '" + t.name + "' (" + gguf::type_name(t.type) + ") has values up to " +
                                         v + ", beyond Q8_0's range (8.3e6), the form qllm runs it in");
    }
    if (release) m_.file->release(src, t.bytes);
    if (tt == ggml_type::f32) {
      ops::packed_weights w(tt, rows.get(), n, k, nt);
      m_.owned_f32.push_back(std::move(rows));
      m_.weight_bytes += w.bytes();
      return w;
    }
    if (k % qk != 0)
      throw error(errc::unsupported, "model: tensor '" + t.name + "' rows of " + std::to_string(k) +
                                         " cannot be quantized to q8_0 (not a multiple of 32)");
    std::unique_ptr<block_q8_0[]> q(new block_q8_0[std::size_t(n * k / qk)]);
    ref::quantize_row_q8_0(rows.get(), q.get(), nullptr, n * k);
    ops::packed_weights w = pack(q.get());
    offset += arena_bytes(t);
    m_.weight_bytes += w.bytes();
    return w;
  }

 private:
  model_impl& m_;
  const model_options& opt_;
  uint8_t* write_ = nullptr;
  const uint8_t* cached_ = nullptr;
};

// What a cache file made from this load must match. Source: the mapped file (device, inode, size,
// modification and change times, from the descriptor that was mapped, not the path, which may
// name another file by now), its tensor table and the first and last 256 bytes of every tensor.
// Plan: the qllm version, each matrix's target type in arena order, whether the embeddings are in
// the cache, the panel layouts and byte order.
weight_cache::digest cache_digest(const gguf::file& f, const loader& ld,
                                  const std::vector<const gguf::tensor_info*>& mats, bool embd_in_cache) {
  weight_cache::hasher src;
  const gguf::file_identity& id = f.identity();
  for (uint64_t v : {id.dev, id.ino, id.size, id.mtime_ns, id.ctime_ns, uint64_t(f.size())}) src.u64(v);
  for (const auto& t : f.tensors()) {
    src.str(t.name);
    src.u64(uint64_t(t.type));
    for (int64_t d : t.ne) src.u64(uint64_t(d));
    src.u64(t.offset);
    const std::size_t n = std::min<std::size_t>(t.bytes, 256);
    src.bytes(f.tensor_data(t), n);
    src.bytes(f.tensor_data(t) + t.bytes - n, n);
  }
  weight_cache::hasher plan;
  plan.u64(weight_cache::layout_version);
  plan.str(QLLM_CXX_VERSION_STRING);  // another qllm release repacks afresh, whatever it changed
  plan.u64(sizeof(void*) * 256 + (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__));
  plan.u64(sizeof(kernels::block_q4_0x8) + (sizeof(kernels::block_q8_0x8) << 16) +
           (sizeof(kernels::block_q4_kx8) << 32) + (sizeof(kernels::block_q5_kx8) << 48));
  plan.u64(sizeof(kernels::block_q6_kx8));
  for (const auto* t : mats) {
    plan.str(t->name);
    plan.u64(uint64_t(ld.target(*t)));
  }
  plan.u64(embd_in_cache);
  return {src.value(), plan.value()};
}

// Writes the freshly repacked arena (and the embeddings) to the cache, then moves this model onto
// the cache file's shared mapping: its matrices become views of the file's pages and the private
// arena is freed, so the first process shares its weights with later ones too.
// Never throws: a cache that cannot be written leaves the loaded model as it is.
void write_cache(model_impl& m, const std::string& path, const weight_cache::digest& digest,
                 uint64_t source_ctime_ns, std::size_t total, std::size_t embd_bytes) noexcept try {
  const auto t0 = std::chrono::steady_clock::now();
  std::string why;
  if (!weight_cache::write(path, digest, source_ctime_ns, m.arena_base, total, embd_bytes ? m.embd : nullptr,
                           embd_bytes, why)) {
    m.cache_status = "not written: " + why + m.cache_status;
    return;
  }
  auto c = weight_cache::open(path, digest, total, embd_bytes, why);
  if (!c) {  // e.g. replaced or removed in between by another process, or a file system without modes
    m.cache_status = "not used after writing: " + (why.empty() ? path + " is gone" : why) + m.cache_status;
    return;
  }
  const uint8_t* old = m.arena_base;
  auto move = [&](ops::packed_weights& w) {
    if (ops::packed_weights::repacked(w.type()))
      w = ops::packed_weights::view(w.type(), w.rows(), w.cols(),
                                    c->arena + (static_cast<const uint8_t*>(w.data()) - old));
  };
  for (auto& l : m.layers)
    for (auto* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) move(*w);
  move(m.output);
  m.cache = model_impl::mapping(c->base, c->size);
  m.arena_base = c->arena;
  m.arena = model_impl::mapping();
  if (c->embd) {
    m.embd = c->embd;
    m.owned_embd.reset();
  }
  char num[64];
  std::snprintf(num, sizeof num, " (%s, %.2f s)", format_bytes(c->size).c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  m.cache_status = "wrote " + path + num + m.cache_status;
} catch (...) {  // std::bad_alloc: the model itself is complete
  try {
    m.cache_status = "not written: out of memory";
  } catch (...) {
    m.cache_status.clear();  // never allocates
  }
}

}  // namespace

model::model(std::unique_ptr<model_impl> impl) : impl_(std::move(impl)) {}
model::~model() = default;
const model_config& model::config() const noexcept { return impl_->cfg; }
ggml_type model::weight_type() const noexcept { return impl_->wtype; }
const std::string& model::weight_mix() const noexcept { return impl_->mix; }
int64_t model::n_params() const noexcept { return impl_->n_params; }
std::size_t model::weight_bytes() const noexcept { return impl_->weight_bytes; }
double model::load_seconds() const noexcept { return impl_->load_seconds; }
std::array<double, 3> model::load_stage_seconds() const noexcept { return impl_->load_stages; }
const tokenizer* model::get_tokenizer() const noexcept { return impl_->tok.get(); }
const char* model::isa() const noexcept { return impl_->kt->name; }
const std::string& model::cache_status() const noexcept { return impl_->cache_status; }
bool model::file_mapped() const noexcept { return impl_->file.has_value(); }

std::shared_ptr<const model> model::load(const std::string& path, const model_options& opt) {
  const release_omp_workers_at_exit release;  // the loading thread may never compute with the model
  try {
    return load_unguarded(path, opt);
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "model: out of memory loading '" + path + "'");
  }
}

std::shared_ptr<const model> model::load_unguarded(const std::string& path, const model_options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [](auto t) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(); };
  if (opt.n_threads < 0 || opt.n_threads > max_threads())
    throw error(errc::invalid_argument, "model: n_threads " + std::to_string(opt.n_threads) +
                                            " out of range (0 = default, at most " +
                                            std::to_string(max_threads()) + ")");
  auto m = std::make_unique<model_impl>(gguf::file::open(path));
  const gguf::file& f = *m->file;
  model_config& c = m->cfg;
  if (opt.isa.empty()) {
    m->kt = &kernels::active();
  } else {
    m->kt = kernels::find_table(opt.isa);
    if (!m->kt) throw error(errc::invalid_argument, "model: unknown kernel table '" + opt.isa + "'");
    const auto run = kernels::runnable_tables();
    if (std::find(run.begin(), run.end(), m->kt) == run.end())
      throw error(errc::unsupported, "model: kernel table '" + opt.isa + "' cannot run on this CPU");
  }
  c = read_config(f);
  if (const gguf::tensor_info* rf = f.find_tensor("rope_freqs.weight")) {
    // Llama-3.1's "llama3" scaling as llama.cpp's converter stores it: one factor per frequency
    need(f, "rope_freqs.weight", c.n_rot / 2, 0);
    if (rf->type != ggml_type::f32) bad("tensor 'rope_freqs.weight' must be f32");
    c.rope_freq_factors.resize(std::size_t(c.n_rot / 2));
    std::memcpy(c.rope_freq_factors.data(), f.tensor_data(*rf), c.rope_freq_factors.size() * sizeof(float));
    for (std::size_t i = 0; i < c.rope_freq_factors.size(); ++i)
      if (!(c.rope_freq_factors[i] >= 1.0f / 1024 && c.rope_freq_factors[i] <= 1024.0f))
        bad("rope_freqs.weight[" + std::to_string(i) + "] is out of range (1/1024 .. 1024)");
  }

  const gguf::tensor_info* te = f.find_tensor("token_embd.weight");
  if (!te) bad("missing tensor 'token_embd.weight'");
  if (te->ne.size() != 2 || te->ne[0] != c.n_embd)
    bad("tensor 'token_embd.weight' must have shape [" + std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = te->ne[1];
  if (c.n_vocab < 1) bad("tensor 'token_embd.weight' has 0 rows (n_vocab must be at least 1)");
  if (f.find("llama.vocab_size") && int64_t(f.get_uint("llama.vocab_size")) != c.n_vocab)
    bad("llama.vocab_size disagrees with token_embd.weight (" + std::to_string(c.n_vocab) + " rows)");
  m->tok = tokenizer::from_gguf(f);  // before the weights: a bad vocabulary fails fast
  if (m->tok && m->tok->n_vocab() != c.n_vocab)
    bad("the vocabulary has " + std::to_string(m->tok->n_vocab()) + " tokens, token_embd.weight " +
        std::to_string(c.n_vocab) + " rows");
  if (!matrix_type_ok(te->type))
    throw error(errc::unsupported, "model: tensor 'token_embd.weight' has type " +
                                       std::string(gguf::type_name(te->type)) + ", which qllm cannot read");
  m->embd_type = te->type;
  m->embd = f.tensor_data(*te);
  m->embd_row_bytes = te->bytes / std::size_t(c.n_vocab);

  // Shapes first (every error before any allocation), then one arena for all repacks.
  const int64_t kv = c.kv_dim();
  std::vector<const gguf::tensor_info*> mats;
  loader ld(*m, opt);
  std::vector<std::array<const gguf::tensor_info*, 9>> lt(std::size_t(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    auto& a = lt[std::size_t(l)];
    a[0] = &need(f, p + "attn_norm.weight", c.n_embd, 0);
    a[1] = &need(f, p + "attn_q.weight", c.n_embd, c.n_embd);
    a[2] = &need(f, p + "attn_k.weight", c.n_embd, kv);
    a[3] = &need(f, p + "attn_v.weight", c.n_embd, kv);
    a[4] = &need(f, p + "attn_output.weight", c.n_embd, c.n_embd);
    a[5] = &need(f, p + "ffn_norm.weight", c.n_embd, 0);
    a[6] = &need(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    a[7] = &need(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    a[8] = &need(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
    for (int i : {1, 2, 3, 4, 6, 7, 8}) mats.push_back(a[std::size_t(i)]);
  }
  const gguf::tensor_info& on = need(f, "output_norm.weight", c.n_embd, 0);
  const gguf::tensor_info* out = f.find_tensor("output.weight");
  const bool tied = out == nullptr;  // tied embeddings: the output matrix is token_embd
  out = tied ? te : &need(f, "output.weight", c.n_embd, c.n_vocab);
  mats.push_back(out);
  std::size_t total = 0;
  bool in_place = false;  // some matrix is read from the file's mapping: the file stays mapped
  for (const auto* t : mats) {
    total += ld.arena_bytes(*t);
    in_place = in_place || ld.in_place(*t);
  }
  m->wtype = lt.empty() ? ld.target(*out) : ld.target(*lt[0][1]);
  m->mix = describe_mix(f);

  // A cache of the repacked weights: map it when it matches this file and plan.
  const std::string cache_dir = weight_cache::directory(opt.cache_dir);
  const std::size_t embd_cached = in_place ? 0 : te->bytes;  // else the embeddings are copied
  weight_cache::digest digest;
  uint64_t ctime_ns = 0;  // when the model file got its place: older caches of the path are stale
  std::string cache_path;
  m->cache_status = "off";
  if (!cache_dir.empty() && total > 0) {
    digest = cache_digest(f, ld, mats, !in_place);
    ctime_ns = f.identity().ctime_ns;
    cache_path = weight_cache::file_path(cache_dir, path, digest);
    std::string why;
    if (auto c = weight_cache::open(cache_path, digest, total, embd_cached, why)) {
      m->cache = model_impl::mapping(c->base, c->size);
      m->arena_base = c->arena;
      if (c->embd) m->embd = c->embd;
      m->cache_status = "mapped " + cache_path;
      ld.set_arena(nullptr, c->arena);
    } else {
      // write_cache() prefixes "wrote ..." or "not written: ..."
      m->cache_status = why.empty() ? "" : " in place of an unusable one (" + why + ")";
    }
  }

  m->load_stages[0] = since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  const bool cache_hit = m->cache.get() != nullptr;
  if (const uint64_t have = memory_available_bytes(); !cache_hit && have > 0 && total > have)
    throw error(errc::out_of_memory, "model: the repacked weights need " + format_bytes(total) +
                                         ", but this process can have " + format_bytes(have) +
                                         " (physical memory, cgroup limit)");
  if (total > 0 && !cache_hit) {
    const std::size_t huge = std::size_t(2) << 20;
    const std::size_t alloc = (total + huge - 1) / huge * huge + huge;
    void* p = mmap(nullptr, alloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throw error(errc::out_of_memory, "model: cannot map " + std::to_string(alloc) + " bytes for weights");
    m->arena = model_impl::mapping(p, alloc);
    // 2 MiB pages, faulted in before the repack: a 4 KiB fault per page of a 3.7 GB arena cost
    // more than the repack itself. The kernel zeroes each page in the faulting thread, so the
    // arena is faulted in 64 MiB pieces by all threads (one thread: 0.7-6 s for 6.7 GiB on a
    // 2-core VM, two: 0.4 s). Both are advice; older kernels fault on first write instead.
    uint8_t* base = static_cast<uint8_t*>(p);
    uint8_t* aligned = base + (huge - reinterpret_cast<uintptr_t>(base) % huge) % huge;
    madvise(base, alloc, MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
    const std::size_t piece = std::size_t(64) << 20;
    const int64_t pieces = int64_t((alloc + piece - 1) / piece);
    const int nt = opt.n_threads > 0 ? opt.n_threads : ops::default_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (pieces > 1)
    for (int64_t i = 0; i < pieces; ++i) {
      const std::size_t at = std::size_t(i) * piece;
      madvise(base + at, std::min(piece, alloc - at), MADV_POPULATE_WRITE);
    }
#endif
    m->arena_base = aligned;
    ld.set_arena(aligned, nullptr);
  }
  m->load_stages[1] = since(t1);
  const auto t2 = std::chrono::steady_clock::now();
  std::size_t cursor = 0;
  m->layers.resize(std::size_t(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    auto& a = lt[std::size_t(l)];
    layer_weights& w = m->layers[std::size_t(l)];
    w.attn_norm = ld.vec(*a[0]);
    w.wq = ld.matrix(*a[1], cursor, true);
    w.wk = ld.matrix(*a[2], cursor, true);
    w.wv = ld.matrix(*a[3], cursor, true);
    w.wo = ld.matrix(*a[4], cursor, true);
    w.ffn_norm = ld.vec(*a[5]);
    w.w_gate = ld.matrix(*a[6], cursor, true);
    w.w_up = ld.matrix(*a[7], cursor, true);
    w.w_down = ld.matrix(*a[8], cursor, true);
  }
  m->output_norm = ld.vec(on);
  m->output = ld.matrix(*out, cursor, !tied);  // a tied table stays mapped for embedding lookups
  for (const auto& t : f.tensors()) {
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    m->n_params += n;
  }
  if (!in_place) {  // every matrix repacked: copy the embeddings (unless cached), release the file
    if (!cache_hit) {
      m->owned_embd.reset(new uint8_t[te->bytes]);
      std::memcpy(m->owned_embd.get(), m->embd, te->bytes);
      m->embd = m->owned_embd.get();
    }
    m->file.reset();
  }
  m->load_stages[2] = since(t2);
  if (!cache_path.empty() && !cache_hit) write_cache(*m, cache_path, digest, ctime_ns, total, embd_cached);
  m->load_seconds = since(t0);
  return std::shared_ptr<const model>(new model(std::move(m)));
}

}  // namespace qllm
