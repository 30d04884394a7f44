// The forward pass against a plain double-precision reference, incremental vs batched decoding,
// thread invariance, and load errors.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <thread>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/random_model.hpp"
#include "qllm/reference.hpp"
#include "test_util.hpp"

using namespace qllm;

namespace {

std::string temp_path(const std::string& tag) {
  return "/tmp/qllm_test_model_" + std::to_string(getpid()) + "_" + tag + ".gguf";
}

struct temp_file {
  std::string path;
  explicit temp_file(std::string p) : path(std::move(p)) {}
  ~temp_file() { std::remove(path.c_str()); }
};

// ---- the double-precision reference forward pass ----
using mat = std::vector<double>;  // row-major [n][k]

mat dequant(const gguf::file& f, const std::string& name) {
  const gguf::tensor_info* t = f.find_tensor(name);
  REQUIRE(t != nullptr);
  int64_t n = 1;
  for (int64_t d : t->ne) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  const uint8_t* p = f.tensor_data(*t);
  switch (t->type) {
    case ggml_type::q4_0: ref::dequantize_row_q4_0(reinterpret_cast<const block_q4_0*>(p), v.data(), n); break;
    case ggml_type::q8_0: ref::dequantize_row_q8_0(reinterpret_cast<const block_q8_0*>(p), v.data(), n); break;
    case ggml_type::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        v[static_cast<size_t>(i)] = bf16_to_fp32(h);
      }
      break;
    case ggml_type::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        v[static_cast<size_t>(i)] = fp16_to_fp32(h);
      }
      break;
    default: std::memcpy(v.data(), p, static_cast<size_t>(n) * 4); break;
  }
  return mat(v.begin(), v.end());
}

struct ref_model {
  int64_t V, E, L, F, H, HKV, D;
  double eps, base;
  double pos_scale = 1.0;  // linear RoPE scaling: 1 / llama.rope.scaling.factor
  std::vector<double> freq_factors;  // per-frequency divisors of theta (llama3 scaling); empty: 1
  mat embd, out_norm, out;
  std::vector<mat> an, wq, wk, wv, wo, fn, wg, wu, wd;
};

ref_model load_ref(const std::string& path) {
  const gguf::file f = gguf::file::open(path);
  ref_model r;
  r.E = int64_t(f.get_uint("llama.embedding_length"));
  r.L = int64_t(f.get_uint("llama.block_count"));
  r.F = int64_t(f.get_uint("llama.feed_forward_length"));
  r.H = int64_t(f.get_uint("llama.attention.head_count"));
  r.HKV = int64_t(f.get_uint("llama.attention.head_count_kv"));
  r.D = r.E / r.H;
  r.eps = f.get_float("llama.attention.layer_norm_rms_epsilon");
  r.base = f.get_float("llama.rope.freq_base");
  if (f.find("llama.rope.scaling.factor")) r.pos_scale = 1.0 / f.get_float("llama.rope.scaling.factor");
  r.embd = dequant(f, "token_embd.weight");
  r.V = int64_t(r.embd.size()) / r.E;
  r.out_norm = dequant(f, "output_norm.weight");
  r.out = f.find_tensor("output.weight") ? dequant(f, "output.weight") : r.embd;
  for (int64_t l = 0; l < r.L; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    r.an.push_back(dequant(f, p + "attn_norm.weight"));
    r.wq.push_back(dequant(f, p + "attn_q.weight"));
    r.wk.push_back(dequant(f, p + "attn_k.weight"));
    r.wv.push_back(dequant(f, p + "attn_v.weight"));
    r.wo.push_back(dequant(f, p + "attn_output.weight"));
    r.fn.push_back(dequant(f, p + "ffn_norm.weight"));
    r.wg.push_back(dequant(f, p + "ffn_gate.weight"));
    r.wu.push_back(dequant(f, p + "ffn_up.weight"));
    r.wd.push_back(dequant(f, p + "ffn_down.weight"));
  }
  return r;
}

std::vector<double> matvec(const mat& w, const std::vector<double>& x) {
  const size_t k = x.size(), n = w.size() / k;
  std::vector<double> y(n, 0.0);
  for (size_t r = 0; r < n; ++r)
    for (size_t i = 0; i < k; ++i) y[r] += w[r * k + i] * x[i];
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const mat& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
  return y;
}

void rope(std::vector<double>& x, int64_t n_head, int64_t d, double pos, double base,
          const std::vector<double>& ff = {}) {
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < d; i += 2) {
      const double th = pos * std::pow(base, -double(i) / double(d)) / (ff.empty() ? 1.0 : ff[size_t(i / 2)]);
      double& a = x[size_t(h * d + i)];
      double& b = x[size_t(h * d + i + 1)];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(th) - b0 * std::sin(th);
      b = a0 * std::sin(th) + b0 * std::cos(th);
    }
  }
}

// Logits of every position: [T][V].
std::vector<std::vector<double>> forward_ref(const ref_model& r, const std::vector<int32_t>& toks) {
  const size_t T = toks.size();
  std::vector<std::vector<double>> x(T);
  for (size_t t = 0; t < T; ++t)
    x[t].assign(r.embd.begin() + toks[t] * r.E, r.embd.begin() + (toks[t] + 1) * r.E);
  for (int64_t l = 0; l < r.L; ++l) {
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const auto xb = rmsnorm(x[t], r.an[size_t(l)], r.eps);
      q[t] = matvec(r.wq[size_t(l)], xb);
      k[t] = matvec(r.wk[size_t(l)], xb);
      v[t] = matvec(r.wv[size_t(l)], xb);
      rope(q[t], r.H, r.D, double(t) * r.pos_scale, r.base, r.freq_factors);
      rope(k[t], r.HKV, r.D, double(t) * r.pos_scale, r.base, r.freq_factors);
    }
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> att(size_t(r.E), 0.0);
      for (int64_t h = 0; h < r.H; ++h) {
        const int64_t g = h / (r.H / r.HKV);
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t i = 0; i < r.D; ++i) d += q[t][size_t(h * r.D + i)] * k[j][size_t(g * r.D + i)];
          s[j] = d / std::sqrt(double(r.D));
          mx = std::max(mx, s[j]);
        }
        double den = 0;
        for (double& e : s) den += (e = std::exp(e - mx));
        for (size_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < r.D; ++i)
            att[size_t(h * r.D + i)] += s[j] / den * v[j][size_t(g * r.D + i)];
      }
      const auto o = matvec(r.wo[size_t(l)], att);
      for (size_t i = 0; i < o.size(); ++i) x[t][i] += o[i];
      const auto xb = rmsnorm(x[t], r.fn[size_t(l)], r.eps);
      auto gt = matvec(r.wg[size_t(l)], xb);
      const auto up = matvec(r.wu[size_t(l)], xb);
      for (size_t i = 0; i < gt.size(); ++i) gt[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
      const auto d = matvec(r.wd[size_t(l)], gt);
      for (size_t i = 0; i < d.size(); ++i) x[t][i] += d[i];
    }
  }
  std::vector<std::vector<double>> logits(T);
  for (size_t t = 0; t < T; ++t) logits[t] = matvec(r.out, rmsnorm(x[t], r.out_norm, r.eps));
  return logits;
}

std::vector<int32_t> some_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t(n);
  uint32_t s = seed;
  for (auto& v : t) v = int32_t((s = s * 1664525u + 1013904223u) >> 8) % int32_t(vocab);
  return t;
}

// Relative RMS error of all logits against the reference.
double rel_rms(std::span<const float> got, const std::vector<std::vector<double>>& want) {
  double e = 0, s = 0;
  size_t i = 0;
  for (const auto& row : want) {
    for (double w : row) {
      e += (got[i] - w) * (got[i] - w);
      s += w * w;
      ++i;
    }
  }
  return std::sqrt(e / s);
}

}  // namespace

TEST_CASE("forward pass agrees with the double-precision reference (MHA and GQA, f32/q8_0/q4_0)") {
  struct variant {
    ggml_type type;
    int64_t n_head_kv;
    kv_type kv;
    double budget;  // relative RMS error of all logits
  } variants[] = {
      {ggml_type::f32, 4, kv_type::f32, 1e-4},  // float path end to end
      {ggml_type::f32, 2, kv_type::f16, 3e-3},  // f16 KV cache rounding
      {ggml_type::f16, 4, kv_type::f32, 1e-4},  // f16 weights read in place
      {ggml_type::bf16, 2, kv_type::f32, 1e-4},  // bf16 weights converted to f32 at load
      {ggml_type::q8_0, 4, kv_type::f16, 3e-2},  // + Q8_0 activation quantization
      {ggml_type::q8_0, 1, kv_type::f16, 3e-2},
      {ggml_type::q4_0, 2, kv_type::f16, 3e-2},
  };
  for (const auto& vt : variants) {
    random_model_spec spec = random_model_preset("tiny");
    spec.type = vt.type;
    spec.n_head_kv = vt.n_head_kv;
    spec.seed = uint32_t(vt.n_head_kv) * 7 + uint32_t(vt.type);
    temp_file tf(temp_path("ref" + std::to_string(int(vt.type)) + "_" + std::to_string(vt.n_head_kv)));
    write_random_model(tf.path, spec);
    const auto m = model::load(tf.path);
    const ref_model r = load_ref(tf.path);
    for (size_t n : {size_t(1), size_t(7), size_t(64)}) {
      CAPTURE(int(vt.type));
      CAPTURE(vt.n_head_kv);
      CAPTURE(n);
      const auto toks = some_tokens(n, spec.n_vocab, uint32_t(n));
      context_params cp;
      cp.n_ctx = 128;
      cp.kv = vt.kv;
      context ctx(m, cp);
      const auto got = ctx.eval(toks, true);
      const auto want = forward_ref(r, toks);
      const double err = rel_rms(got, want);
      MESSAGE("type " << int(vt.type) << " kv_heads " << vt.n_head_kv << " tokens " << n << ": rel RMS " << err);
      CHECK(err < vt.budget);
      double spread = 0;  // logits are not flat
      for (size_t i = 0; i < size_t(spec.n_vocab); ++i) spread += std::fabs(want.back()[i] - want.back()[0]);
      CHECK(spread / double(spec.n_vocab) > 0.1);
      for (float v : got) REQUIRE(std::isfinite(v));
    }
  }
}

TEST_CASE("incremental decoding equals one batched pass, bit for bit, for any thread count and batch") {
  random_model_spec spec = random_model_preset("tiny");
  spec.n_head_kv = 2;
  temp_file tf(temp_path("incr"));
  write_random_model(tf.path, spec);
  const auto m = model::load(tf.path);
  const auto toks = some_tokens(40, spec.n_vocab, 3);
  context_params cp;
  cp.n_ctx = 64;
  cp.n_threads = 1;
  context whole(m, cp);
  const auto a = whole.eval(toks, true);
  const std::vector<float> all(a.begin(), a.end());
  CHECK(whole.n_past() == 40);

  for (int nt : {1, 2, 3}) {
    CAPTURE(nt);
    cp.n_threads = nt;
    context inc(m, cp);
    // a 5-token prompt, then one token at a time
    auto l = inc.eval(std::span(toks).first(5));
    CHECK(test::count_bit_differences(l.data(), &all[4 * size_t(spec.n_vocab)], size_t(spec.n_vocab)) == 0);
    for (size_t t = 5; t < toks.size(); ++t) {
      l = inc.eval(std::span(toks).subspan(t, 1));
      REQUIRE(test::count_bit_differences(l.data(), &all[t * size_t(spec.n_vocab)], size_t(spec.n_vocab)) == 0);
    }
    cp.n_batch = 16;  // a prompt longer than the batch runs in several passes
    context split(m, cp);
    const auto s = split.eval(toks, true);
    CHECK(test::count_bit_differences(s.data(), all.data(), all.size()) == 0);
    cp.n_batch = 512;
  }
}

TEST_CASE("eval rejects bad input without changing state") {
  const random_model_spec spec = random_model_preset("tiny");
  temp_file tf(temp_path("errs"));
  write_random_model(tf.path, spec);
  const auto m = model::load(tf.path);
  CHECK(m->config().n_vocab == spec.n_vocab);
  CHECK(m->config().n_head_kv == spec.n_head_kv);
  CHECK(m->weight_type() == ggml_type::q4_0);
  context_params cp;
  cp.n_ctx = 8;
  context ctx(m, cp);
  const std::vector<int32_t> ok = {1, 5, 9};
  ctx.eval(ok);
  CHECK(ctx.n_past() == 3);
  const std::vector<int32_t> bad = {1, int32_t(spec.n_vocab)};
  CHECK_THROWS_AS(ctx.eval(bad), error);
  const std::vector<int32_t> neg = {-1};
  CHECK_THROWS_AS(ctx.eval(neg), error);
  CHECK_THROWS_AS(ctx.eval(std::span<const int32_t>()), error);
  const std::vector<int32_t> six(6, 7);
  try {
    ctx.eval(six);
    FAIL("overflow not reported");
  } catch (const error& e) {
    CHECK(e.code() == errc::context_overflow);
  }
  CHECK(ctx.n_past() == 3);
  ctx.clear();
  CHECK(ctx.n_past() == 0);
  cp.n_batch = 0;
  CHECK_THROWS_AS(context(m, cp), error);
}

TEST_CASE("F32 weights quantized to Q8_0 at load stay close to the reference") {
  random_model_spec spec = random_model_preset("tiny");
  spec.type = ggml_type::f32;
  spec.tied_output = true;
  temp_file tf(temp_path("qload"));
  write_random_model(tf.path, spec);
  model_options mo;
  mo.quantize_float_weights = true;
  const auto m = model::load(tf.path, mo);
  CHECK(m->weight_type() == ggml_type::q8_0);
  const auto toks = some_tokens(9, spec.n_vocab, 5);
  context ctx(m);
  const auto got = ctx.eval(toks, true);
  const double err = rel_rms(got, forward_ref(load_ref(tf.path), toks));
  MESSAGE("f32 quantized at load, tied output: rel RMS " << err);
  CHECK(err < 5e-2);
  CHECK(err > 1e-5);  // it really was quantized
}

namespace {
// A minimal llama file written by hand, with one thing changed by `edit`.
struct hand_model {
  bool drop_key = false;
  std::string key_to_drop;
  std::string arch = "llama";
  int64_t q_rows = 32;  // attn_q rows (32 is right)
  ggml_type q_type = ggml_type::f32;
  bool drop_tensor = false;
  uint32_t head_count = 2;
  int64_t embd_rows = 300;  // token_embd.weight rows (n_vocab)
};

void write_hand(const std::string& path, const hand_model& h) {
  gguf::writer w;
  auto u32 = [&](const std::string& k, uint32_t v) {
    if (!(h.drop_key && h.key_to_drop == k)) w.set_u32(k, v);
  };
  w.set_string("general.architecture", h.arch);
  u32("llama.context_length", 64);
  u32("llama.embedding_length", 32);
  u32("llama.block_count", 1);
  u32("llama.feed_forward_length", 64);
  u32("llama.attention.head_count", h.head_count);
  if (!(h.drop_key && h.key_to_drop == "llama.attention.layer_norm_rms_epsilon"))
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  auto t = [&](const std::string& name, std::vector<int64_t> ne, ggml_type type = ggml_type::f32) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    size_t bytes = size_t(n) * 4;
    if (type == ggml_type::q8_1) bytes = size_t(n / 32) * 36;
    std::vector<uint8_t> data(bytes, 0);
    w.add_tensor(name, type, ne, data.data(), data.size());
  };
  t("token_embd.weight", {32, h.embd_rows});
  t("output_norm.weight", {32});
  t("blk.0.attn_norm.weight", {32});
  if (h.q_type == ggml_type::q8_1)
    t("blk.0.attn_q.weight", {32, 32}, ggml_type::q8_1);
  else
    t("blk.0.attn_q.weight", {32, h.q_rows});
  t("blk.0.attn_k.weight", {32, 32});
  t("blk.0.attn_v.weight", {32, 32});
  t("blk.0.attn_output.weight", {32, 32});
  t("blk.0.ffn_norm.weight", {32});
  t("blk.0.ffn_gate.weight", {32, 64});
  if (!h.drop_tensor) t("blk.0.ffn_up.weight", {32, 64});
  t("blk.0.ffn_down.weight", {64, 32});
  w.write(path);
}

std::string load_error(const hand_model& h) {
  temp_file tf(temp_path("hand"));
  write_hand(tf.path, h);
  try {
    model::load(tf.path);
  } catch (const error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("load errors name what is wrong") {
  hand_model ok;
  {
    temp_file tf(temp_path("hand_ok"));
    write_hand(tf.path, ok);
    const auto m = model::load(tf.path);
    CHECK(m->config().n_vocab == 300);
    CHECK(m->config().n_head_kv == 2);  // defaults to head_count
    CHECK(m->weight_type() == ggml_type::f32);
  }
  hand_model h = ok;
  h.drop_key = true;
  h.key_to_drop = "llama.block_count";
  CHECK(load_error(h).find("llama.block_count") != std::string::npos);
  h.key_to_drop = "llama.attention.layer_norm_rms_epsilon";
  CHECK(load_error(h).find("layer_norm_rms_epsilon") != std::string::npos);
  h = ok;
  h.arch = "gpt2";
  CHECK(load_error(h).find("gpt2") != std::string::npos);
  h = ok;
  h.q_rows = 31;
  CHECK(load_error(h).find("blk.0.attn_q.weight") != std::string::npos);
  h = ok;
  h.drop_tensor = true;
  CHECK(load_error(h).find("blk.0.ffn_up.weight") != std::string::npos);
  h = ok;
  h.q_type = ggml_type::q8_1;  // a valid GGUF type qllm cannot read as weights
  CHECK(load_error(h).find("blk.0.attn_q.weight") != std::string::npos);
  CHECK(load_error(h).find("q8_1") != std::string::npos);
  h = ok;
  h.head_count = 3;  // 32 is not a multiple of 3
  CHECK(load_error(h).find("head_count") != std::string::npos);
  CHECK_THROWS_AS(model::load("/nonexistent/model.gguf"), error);
  // no vocabulary and an embedding table of 0 rows: was a division by zero (SIGFPE)
  h = ok;
  h.embd_rows = 0;
  CHECK(load_error(h).find("token_embd.weight") != std::string::npos);
  CHECK(load_error(h).find("n_vocab") != std::string::npos);
}

// Llama-3.1's "llama3" RoPE scaling, computed here from its definition (Meta's reference and
// Hugging Face's rope_type "llama3"): frequencies whose wavelength exceeds original_ctx /
// low_freq_factor are divided by factor, those below original_ctx / high_freq_factor are kept, the
// ones between are interpolated. Returned as divisors of theta, as llama.cpp's converter stores
// them in rope_freqs.weight.
std::vector<double> llama3_factors(int64_t d, double base, double factor, double low, double high, double original_ctx) {
  std::vector<double> f;
  const double pi = std::acos(-1.0);
  for (int64_t i = 0; i < d; i += 2) {
    const double freq = std::pow(base, -double(i) / double(d));
    const double wavelen = 2 * pi / freq;
    if (wavelen < original_ctx / high) {
      f.push_back(1.0);
    } else if (wavelen > original_ctx / low) {
      f.push_back(factor);
    } else {
      const double smooth = (original_ctx / wavelen - low) / (high - low);
      const double scaled = (1 - smooth) * freq / factor + smooth * freq;  // the new frequency
      f.push_back(freq / scaled);
    }
  }
  return f;
}

TEST_CASE("llama3 RoPE scaling: rope_freqs.weight factors, GQA, beyond the original context, against the reference") {
  random_model_spec spec = random_model_preset("tiny");
  spec.type = ggml_type::f32;
  spec.seed = 43;
  spec.n_head = 4;
  spec.n_head_kv = 2;  // grouped-query attention, as Llama-3
  const int64_t d = spec.n_embd / spec.n_head;
  // original context 16, factor 8, low 1, high 4: one interpolated frequency, the rest divided by 8
  const std::vector<double> ff = llama3_factors(d, 10000.0, 8.0, 1.0, 4.0, 16.0);
  int kept = 0, divided = 0, between = 0;
  for (double v : ff) (v == 1.0 ? kept : v == 8.0 ? divided : between)++;
  CHECK(between >= 1);
  CHECK(divided >= 1);
  spec.rope_freqs.assign(ff.begin(), ff.end());
  temp_file tf(temp_path("rope_llama3"));
  write_random_model(tf.path, spec);
  const auto m = model::load(tf.path);
  REQUIRE(m->config().rope_freq_factors.size() == std::size_t(d / 2));
  const auto toks = some_tokens(48, 512, 9);  // three times the original context
  context_params cp;
  cp.n_ctx = 64;
  cp.kv = kv_type::f32;
  context ctx(m, cp);
  const auto got = ctx.eval(toks, true);
  ref_model r = load_ref(tf.path);
  r.freq_factors = ff;
  const double err = rel_rms(got, forward_ref(r, toks));
  r.freq_factors.clear();  // what a loader that ignores rope_freqs.weight computes
  const double err_plain = rel_rms(got, forward_ref(r, toks));
  MESSAGE("llama3 factors: rel RMS " << err << " against the reference, " << err_plain << " without the factors");
  CHECK(err < 1e-4);
  CHECK(err_plain > 1e-2);
  // token by token (the cached table) gives the same logits as the batch
  context one(m, cp);
  std::vector<float> last;
  for (int32_t t : toks) {
    const auto l = one.eval(std::span<const int32_t>(&t, 1), false);
    last.assign(l.begin(), l.end());
  }
  const std::size_t V = std::size_t(m->config().n_vocab);
  double diff = 0;
  for (std::size_t i = 0; i < V; ++i) diff = std::max(diff, double(std::fabs(last[i] - got[(toks.size() - 1) * V + i])));
  CHECK(diff < 1e-3);
  {  // a file that also names the type 'llama3' is the same model; naming it without the tensor is refused
    random_model_spec named = spec;
    named.extra_strings = {{"llama.rope.scaling.type", "llama3"}};
    write_random_model(tf.path, named);
    context again(model::load(tf.path), cp);
    const auto same = again.eval(toks, true);
    CHECK(std::equal(same.begin(), same.end(), got.begin(), got.end()));
    named.rope_freqs.clear();
    write_random_model(tf.path, named);
    try {
      (void)model::load(tf.path);
      FAIL("llama3 scaling without rope_freqs.weight loaded");
    } catch (const error& e) {
      CHECK(e.code() == errc::unsupported);
      CHECK(std::string(e.what()).find("rope_freqs.weight") != std::string::npos);
    }
  }
  // bad factor tensors are refused by name
  for (const auto& bad : std::vector<std::vector<float>>{{1.0f, 2.0f, 3.0f}, std::vector<float>(std::size_t(d / 2), 0.0f)}) {
    random_model_spec b = spec;
    b.rope_freqs = bad;
    write_random_model(tf.path, b);
    try {
      (void)model::load(tf.path);
      FAIL("a bad rope_freqs.weight loaded");
    } catch (const error& e) {
      CHECK(std::string(e.what()).find("rope_freqs.weight") != std::string::npos);
    }
  }
}

TEST_CASE("Code Llama: RoPE base 1e6 and a 16k context, against the reference") {
  random_model_spec spec = random_model_preset("codellama-tiny");
  CHECK(spec.rope_freq_base == 1e6f);
  CHECK(spec.n_ctx == 16384);
  CHECK(random_model_preset("codellama-7b").n_vocab == 32016);
  spec.type = ggml_type::f32;
  spec.seed = 47;
  temp_file tf(temp_path("codellama"));
  write_random_model(tf.path, spec);
  const auto m = model::load(tf.path);
  CHECK(m->config().rope_freq_base == 1e6f);
  CHECK(m->config().n_ctx_train == 16384);
  const auto toks = some_tokens(40, 512, 11);
  context_params cp;
  cp.n_ctx = 64;
  cp.kv = kv_type::f32;
  context ctx(m, cp);
  const auto got = ctx.eval(toks, true);
  ref_model r = load_ref(tf.path);
  REQUIRE(r.base == 1e6);
  const double err = rel_rms(got, forward_ref(r, toks));
  r.base = 10000.0;  // what a loader that ignored llama.rope.freq_base would compute
  const double err_default = rel_rms(got, forward_ref(r, toks));
  MESSAGE("Code Llama base 1e6: rel RMS " << err << " against the reference, " << err_default << " with base 10000");
  CHECK(err < 1e-4);
  CHECK(err_default > 1e-2);
  // the whole 16k window is usable: a session opens at the training context
  context_params full;
  full.n_ctx = 0;  // the model's training context
  context big(m, full);
  CHECK(big.n_ctx() == 16384);
}

TEST_CASE("linear RoPE scaling: positions scaled by 1/factor, against the reference; other types refused") {
  auto spec_with = [](std::vector<std::pair<std::string, std::string>> s,
                      std::vector<std::pair<std::string, float>> fl) {
    random_model_spec spec = random_model_preset("tiny");
    spec.type = ggml_type::f32;
    spec.seed = 41;
    spec.extra_strings = std::move(s);
    spec.extra_f32 = std::move(fl);
    return spec;
  };
  const auto toks = some_tokens(40, 512, 5);
  context_params cp;
  cp.n_ctx = 64;
  cp.kv = kv_type::f32;
  std::vector<float> scaled;
  {
    temp_file tf(temp_path("rope_linear"));
    write_random_model(tf.path, spec_with({{"llama.rope.scaling.type", "linear"}},
                                          {{"llama.rope.scaling.factor", 4.0f}}));
    const auto m = model::load(tf.path);
    CHECK(m->config().rope_freq_scale == 0.25f);
    context ctx(m, cp);
    const auto got = ctx.eval(toks, true);
    scaled.assign(got.begin(), got.end());
    ref_model r = load_ref(tf.path);
    REQUIRE(r.pos_scale == 0.25);
    const double err = rel_rms(got, forward_ref(r, toks));
    r.pos_scale = 1.0;  // what the model computed before scaling was read
    const double err_unscaled = rel_rms(got, forward_ref(r, toks));
    MESSAGE("linear x4: rel RMS " << err << " against the scaled reference, " << err_unscaled << " unscaled");
    CHECK(err < 1e-4);
    CHECK(err_unscaled > 1e-2);
  }
  {  // the older key gives the same model
    temp_file tf(temp_path("rope_old_key"));
    write_random_model(tf.path, spec_with({}, {{"llama.rope.scale_linear", 4.0f}}));
    const auto m = model::load(tf.path);
    context ctx(m, cp);
    const auto got = ctx.eval(toks, true);
    CHECK(std::equal(got.begin(), got.end(), scaled.begin(), scaled.end()));
  }
  {  // "none" and a zero factor are unscaled
    temp_file tf(temp_path("rope_none"));
    write_random_model(tf.path, spec_with({{"llama.rope.scaling.type", "none"}},
                                          {{"llama.rope.scaling.factor", 4.0f}}));
    CHECK(model::load(tf.path)->config().rope_freq_scale == 1.0f);
    write_random_model(tf.path, spec_with({{"llama.rope.scaling.type", "linear"}},
                                          {{"llama.rope.scaling.factor", 0.0f}}));
    CHECK(model::load(tf.path)->config().rope_freq_scale == 1.0f);
  }
  auto load_fails = [&](std::vector<std::pair<std::string, std::string>> s,
                        std::vector<std::pair<std::string, float>> fl, errc code, const char* needle) {
    temp_file tf(temp_path("rope_bad"));
    write_random_model(tf.path, spec_with(std::move(s), std::move(fl)));
    try {
      (void)model::load(tf.path);
      FAIL("loaded");
    } catch (const error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  load_fails({{"llama.rope.scaling.type", "yarn"}}, {{"llama.rope.scaling.factor", 4.0f}},
             errc::unsupported, "yarn");
  load_fails({{"llama.rope.scaling.type", "longrope"}}, {}, errc::unsupported, "longrope");
  load_fails({{"llama.rope.scaling.type", "linear"}}, {{"llama.rope.scaling.factor", -2.0f}},
             errc::bad_format, "scaling factor");
  load_fails({}, {{"llama.rope.scaling.factor", std::numeric_limits<float>::infinity()}},
             errc::bad_format, "scaling factor");
  load_fails({}, {{"llama.rope.scaling.factor", 1e-30f}}, errc::bad_format, "factor 1e-30 is out");
}

TEST_CASE("quantized models release their file: it may be overwritten, truncated or deleted") {
  random_model_spec spec = random_model_preset("tiny");
  spec.type = ggml_type::q8_0;
  temp_file tf(temp_path("release"));
  write_random_model(tf.path, spec);
  const auto toks = some_tokens(20, spec.n_vocab, 3);
  std::vector<float> before;
  {
    const auto m = model::load(tf.path);
    context ctx(m, {});
    const auto l = ctx.eval(toks);
    before.assign(l.begin(), l.end());
  }
  const auto m = model::load(tf.path);
  CHECK_FALSE(m->file_mapped());
  {  // overwritten in place with other bytes, then cut short: what `cp new old` does to a mapping
    std::FILE* f = std::fopen(tf.path.c_str(), "r+b");
    REQUIRE(f);
    std::vector<uint8_t> junk(4096, 0xAB);
    std::fwrite(junk.data(), 1, junk.size(), f);
    std::fclose(f);
    REQUIRE(::truncate(tf.path.c_str(), 100) == 0);
  }
  context ctx(m, {});
  const auto after = ctx.eval(toks);  // a SIGBUS or other logits if anything still read the file
  CHECK(std::equal(after.begin(), after.end(), before.begin(), before.end()));
  // f16 matrices are read in place: the mapping stays (replace such a file by rename)
  spec.type = ggml_type::f16;
  write_random_model(tf.path, spec);
  CHECK(model::load(tf.path)->file_mapped());
  model_options o;
  o.quantize_float_weights = true;  // ... unless they are quantized at load
  CHECK_FALSE(model::load(tf.path, o)->file_mapped());
}

TEST_CASE("a context that cannot fit is refused before allocating, with the numbers") {
  random_model_spec spec = random_model_preset("tiny");
  spec.n_embd = 1024;  // kv_dim 1024: 8 KiB of f16 KV per position and layer
  spec.n_head = 8;
  spec.n_head_kv = 8;
  spec.n_ff = 256;
  spec.n_vocab = 300;
  temp_file tf(temp_path("huge_ctx"));
  write_random_model(tf.path, spec);
  const auto m = model::load(tf.path);
  context_params cp;
  cp.n_ctx = int64_t(1) << 24;  // 2 layers x 2 x 16.8 M positions x 1024 x 2 bytes = 128 GiB
  try {
    context ctx(m, cp);
    FAIL("a 128 GiB KV cache was allocated");
  } catch (const error& e) {
    CHECK(e.code() == errc::out_of_memory);
    const std::string msg = e.what();
    MESSAGE(msg);
    CHECK(msg.find("n_ctx 16777216 needs") != std::string::npos);
    CHECK(msg.find("KV cache 128.0 GiB") != std::string::npos);
    CHECK(msg.find("this process can have") != std::string::npos);
  }
  cp.n_ctx = 4096;  // a sensible window still works
  context ok(m, cp);
  CHECK(ok.n_ctx() == 4096);
}

TEST_CASE("special token ids are range-checked before narrowing to int32") {
  for (uint64_t bad_id : {(uint64_t(1) << 32) + 1, uint64_t(512), uint64_t(1) << 40}) {
    random_model_spec spec = random_model_preset("tiny");
    spec.extra_u64 = {{"tokenizer.ggml.bos_token_id", bad_id}};
    temp_file tf(temp_path("bos"));
    write_random_model(tf.path, spec);
    CAPTURE(bad_id);
    try {
      (void)model::load(tf.path);
      FAIL("loaded");  // 2^32 + 1 used to pass as token 1
    } catch (const error& e) {
      CHECK(e.code() == errc::bad_format);
      CHECK(std::string(e.what()).find("bos_token_id") != std::string::npos);
    }
  }
}

// Every dimension of every tensor info set to hostile values: load throws qllm::error or works.
TEST_CASE("tensor infos with hostile dimensions never crash the loader") {
  random_model_spec spec = random_model_preset("tiny");
  spec.vocabulary = false;  // n_vocab comes from token_embd.weight alone
  temp_file src(temp_path("dims_src"));
  write_random_model(src.path, spec);
  std::vector<uint8_t> bytes;
  {
    std::FILE* f = std::fopen(src.path.c_str(), "rb");
    REQUIRE(f);
    int ch;
    while ((ch = std::fgetc(f)) != EOF) bytes.push_back(uint8_t(ch));
    std::fclose(f);
  }
  const auto f0 = gguf::file::open(src.path);
  temp_file dst(temp_path("dims"));
  int rejected = 0, loaded = 0;
  const int64_t hostile[] = {0, 1, -1, 31, 33, int64_t(1) << 31, int64_t(1) << 40, INT64_MAX};
  for (const auto& t : f0.tensors()) {
    // the tensor info: u64 name length, name, u32 n_dims, n_dims x i64 ne, ...
    const std::string key = t.name;
    auto it = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
    while (it != bytes.end()) {  // the info, not a metadata string that contains the name
      const std::size_t at = std::size_t(it - bytes.begin()) + key.size();
      uint32_t nd;
      std::memcpy(&nd, &bytes[at], 4);
      if (nd == t.ne.size()) break;
      it = std::search(it + 1, bytes.end(), key.begin(), key.end());
    }
    REQUIRE(it != bytes.end());
    const std::size_t ne_at = std::size_t(it - bytes.begin()) + key.size() + 4;
    for (std::size_t d = 0; d < t.ne.size(); ++d) {
      for (int64_t v : hostile) {
        auto m = bytes;
        std::memcpy(&m[ne_at + 8 * d], &v, 8);
        std::FILE* f = std::fopen(dst.path.c_str(), "wb");
        REQUIRE(f);
        std::fwrite(m.data(), 1, m.size(), f);
        std::fclose(f);
        try {
          const auto mp = model::load(dst.path);
          context_params cp;
          cp.n_ctx = 16;
          context ctx(mp, cp);
          (void)ctx.eval(std::vector<int32_t>{0, 1, 2});
          ++loaded;
        } catch (const error&) {
          ++rejected;
        }
      }
    }
  }
  MESSAGE("hostile dimensions: " << rejected << " rejected, " << loaded << " loaded");
  CHECK(rejected > 0);
}

namespace {
std::vector<float> logits_of(const std::shared_ptr<const model>& m, const std::vector<int32_t>& toks) {
  context ctx(m, {});
  const auto l = ctx.eval(toks, true);
  return {l.begin(), l.end()};
}
std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> v;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) v.push_back(e.path().string());
  std::sort(v.begin(), v.end());
  return v;
}
}  // namespace

TEST_CASE("repacked-weight cache: written once, mapped after, bit-identical, stale or broken files replaced") {
  test::tmpdir dir("qllm_cache");
  const std::string cache = dir / "cache";
  for (const char* scheme : {"", "q4_k_m"}) {
    for (bool tied : {false, true}) {
      CAPTURE(scheme);
      CAPTURE(tied);
      random_model_spec spec = random_model_preset("tiny");
      spec.n_embd = 256;  // k-quant rows: multiples of 256
      spec.n_ff = 512;
      spec.scheme = scheme;
      spec.tied_output = tied;
      const std::string path = dir / "m.gguf";
      write_random_model(path, spec);
      const auto toks = some_tokens(12, spec.n_vocab, 5);
      model_options off;
      off.cache_dir = "none";
      const auto ref = logits_of(model::load(path, off), toks);
      CHECK(model::load(path, off)->cache_status() == "off");

      model_options o;
      o.cache_dir = cache;
      std::filesystem::remove_all(cache);
      auto first = model::load(path, o);  // writes, then runs from the file's mapping
      CHECK(first->cache_status().rfind("wrote " + cache + "/m.gguf-", 0) == 0);
      CHECK_FALSE(first->file_mapped());
      CHECK(test::count_bit_differences(logits_of(first, toks).data(), ref.data(), ref.size()) == 0);
      const auto files = files_in(cache);
      REQUIRE(files.size() == 1);
      const std::string first_file = files[0];
      auto second = model::load(path, o);
      CHECK(second->cache_status() == "mapped " + first_file);
      CHECK(test::count_bit_differences(logits_of(second, toks).data(), ref.data(), ref.size()) == 0);

      // the model file deleted: models loaded from the cache still run (nothing reads the GGUF)
      const auto bytes = std::filesystem::file_size(path);
      std::filesystem::rename(path, path + ".away");
      CHECK(test::count_bit_differences(logits_of(second, toks).data(), ref.data(), ref.size()) == 0);
      std::filesystem::rename(path + ".away", path);
      CHECK(std::filesystem::file_size(path) == bytes);
      // a file moved into place (new change time) is another source: a new cache, the old one removed
      auto moved = model::load(path, o);
      CHECK(moved->cache_status().rfind("wrote " + cache + "/m.gguf-", 0) == 0);
      REQUIRE(files_in(cache).size() == 1);
      CHECK(files_in(cache)[0] != first_file);
      const std::string cfile = files_in(cache)[0];
      CHECK(test::count_bit_differences(logits_of(moved, toks).data(), ref.data(), ref.size()) == 0);

      // A truncated cache file: not used (the reason is named), replaced by a new one. (qllm never
      // changes a cache file in place; truncating one that processes map would stop them with
      // SIGBUS, as it would for any mapped file, so no model maps it here.)
      first.reset();
      second.reset();
      moved.reset();
      std::filesystem::resize_file(cfile, std::filesystem::file_size(cfile) - 4096);
      const auto third = model::load(path, o);
      CHECK(third->cache_status().rfind("wrote " + cfile, 0) == 0);
      CHECK(third->cache_status().find("in place of an unusable one (" + cfile + " has ") != std::string::npos);
      CHECK(test::count_bit_differences(logits_of(third, toks).data(), ref.data(), ref.size()) == 0);
      CHECK(model::load(path, o)->cache_status() == "mapped " + cfile);
      // a damaged header (one byte of the source digest inverted in place: the mapped pages of
      // `third` stay valid; a fixed value written there would leave the header intact whenever
      // the digest already held it)
      {
        std::FILE* f = std::fopen(cfile.c_str(), "r+b");
        REQUIRE(f);
        REQUIRE(std::fseek(f, 20, SEEK_SET) == 0);
        const int byte = std::fgetc(f);
        REQUIRE(byte != EOF);
        REQUIRE(std::fseek(f, 20, SEEK_SET) == 0);
        REQUIRE(std::fputc(byte ^ 0xff, f) != EOF);
        REQUIRE(std::fclose(f) == 0);
      }
      CHECK(model::load(path, o)->cache_status().find("(" + cfile + " is not a qllm cache file (bad header))") !=
            std::string::npos);
      const auto mapped = model::load(path, o);
      CHECK(mapped->cache_status() == "mapped " + cfile);
      // the model file rewritten (other weights): another cache, the stale one removed
      spec.seed = 9;
      write_random_model(path, spec);
      const auto ref2 = logits_of(model::load(path, off), toks);
      const auto fourth = model::load(path, o);
      CHECK(fourth->cache_status().rfind("wrote ", 0) == 0);
      CHECK(test::count_bit_differences(logits_of(fourth, toks).data(), ref2.data(), ref2.size()) == 0);
      const auto after = files_in(cache);
      REQUIRE(after.size() == 1);
      CHECK(after[0] != cfile);
      // models mapping the removed stale file still run from its pages, which live while mapped
      CHECK(test::count_bit_differences(logits_of(mapped, toks).data(), ref.data(), ref.size()) == 0);
    }
  }

  random_model_spec spec = random_model_preset("tiny");
  const std::string path = dir / "q.gguf";
  write_random_model(path, spec);
  model_options o;
  {  // four loads of one model at once, the cache empty: each writes its own temporary file
    o.cache_dir = dir / "together";
    model_options off;
    off.cache_dir = "none";
    const auto toks = some_tokens(8, spec.n_vocab, 2);
    const auto ref = logits_of(model::load(path, off), toks);
    std::vector<std::shared_ptr<const model>> ms(4);
    std::vector<std::thread> th;
    for (auto& m : ms) th.emplace_back([&] { m = model::load(path, o); });
    for (auto& t : th) t.join();
    for (auto& m : ms) {
      REQUIRE(m);
      CHECK(test::count_bit_differences(logits_of(m, toks).data(), ref.data(), ref.size()) == 0);
    }
    const auto files = files_in(o.cache_dir);
    REQUIRE(files.size() == 1);  // no temporary file left behind
    // readable by its owner only, like the private model it may come from
    namespace fs = std::filesystem;
    CHECK((fs::status(files[0]).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
    // a cache file others may write is not run
    std::filesystem::permissions(files[0], std::filesystem::perms::others_write, std::filesystem::perm_options::add);
    const auto m = model::load(path, o);
    CHECK(m->cache_status().find("(" + files[0] + " belongs to another user or is writable by others)") !=
          std::string::npos);
    CHECK(test::count_bit_differences(logits_of(m, toks).data(), ref.data(), ref.size()) == 0);
  }
  {  // a cache over the file size limit is not written (writing it would raise SIGXFSZ and end
     // the process); the model loads all the same
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    o.cache_dir = dir / "fsize";
    std::shared_ptr<const model> m;
    {
      struct restore {  // the limit goes back even if the load throws, before anything is written
        rlimit r;
        ~restore() { ::setrlimit(RLIMIT_FSIZE, &r); }
      } guard{old};
      rlimit small = old;
      small.rlim_cur = 8192;
      if (::setrlimit(RLIMIT_FSIZE, &small) == 0) m = model::load(path, o);
    }
    REQUIRE(m);
    CHECK(m->cache_status().rfind("not written: the file size limit (ulimit -f) is 8 KiB, the cache needs ", 0) == 0);
    CHECK(files_in(o.cache_dir).empty());
    CHECK(model::load(path, o)->cache_status().rfind("wrote ", 0) == 0);  // the limit lifted: written
  }
  // a cache directory that cannot be made: the load works and says why nothing was written
  o.cache_dir = path + "/sub";
  const auto m = model::load(path, o);
  CHECK(m->cache_status().rfind("not written: cannot create " + path + "/sub", 0) == 0);
  CHECK(m->cache_status().find("unusable") == std::string::npos);  // there was no file to replace
  {  // a FIFO at the cache's name must not block the load; a killed writer's old temporary file goes
    o.cache_dir = dir / "fifo";
    const std::string name = files_in(dir / "together")[0];
    std::filesystem::create_directories(o.cache_dir);
    const std::string at = o.cache_dir + "/" + std::filesystem::path(name).filename().string();
    REQUIRE(::mkfifo(at.c_str(), 0600) == 0);
    const std::string old_tmp = at + ".tmp.AbC123", new_tmp = at + ".tmp.XyZ789";
    for (const auto& t : {old_tmp, new_tmp}) {
      std::FILE* f = std::fopen(t.c_str(), "wb");
      REQUIRE(f);
      std::fclose(f);
    }
    std::filesystem::last_write_time(old_tmp, std::filesystem::file_time_type::clock::now() - std::chrono::hours(1));
    const auto mf = model::load(path, o);
    CHECK(mf->cache_status().rfind("wrote " + at, 0) == 0);
    CHECK(mf->cache_status().find("is not a complete cache file") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(old_tmp));
    CHECK(std::filesystem::exists(new_tmp));  // a writer may still be at it
  }
  // the environment variable, and "none" there
  ::setenv("QLLM_CACHE_DIR", cache.c_str(), 1);
  CHECK(model::load(path)->cache_status().rfind("wrote " + cache + "/q.gguf-", 0) == 0);
  CHECK(model::load(path)->cache_status().rfind("mapped " + cache + "/q.gguf-", 0) == 0);
  o.cache_dir = "none";
  CHECK(model::load(path, o)->cache_status() == "off");
  ::setenv("QLLM_CACHE_DIR", "none", 1);
  CHECK(model::load(path)->cache_status() == "off");
  ::unsetenv("QLLM_CACHE_DIR");
  // f16 matrices are read in place: only the repacked ones (none here) would be cached
  spec.type = ggml_type::f16;
  write_random_model(path, spec);
  o.cache_dir = cache;
  CHECK(model::load(path, o)->cache_status() == "off");
  CHECK(model::load(path, o)->file_mapped());
}
