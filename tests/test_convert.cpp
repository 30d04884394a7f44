// qllm convert: a Hugging Face checkpoint written by the test (two safetensors shards with an
// index, F16 and BF16 weights, a tokenizer.model trained here by sentencepiece) converts to GGUF
// whose logits match a double-precision forward with Hugging Face semantics (rotate-half RoPE on
// the unpermuted Q/K weights); corrupt checkpoints are clear errors that leave no output behind.
#include <doctest/doctest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "qllm/convert.hpp"
#include "qllm/error.hpp"
#include "qllm/formats.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/random_model.hpp"
#include "qllm/safetensors.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"
#include "llama3_fixture.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace qllm;

namespace {

struct tmpdir : test::tmpdir {
  tmpdir() : test::tmpdir("qllm_convert") {}
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A sentencepiece BPE tokenizer with byte fallback, configured as Llama-2's, trained once on the
// GPL text every Debian system has.
const std::string& trained_tokenizer() {
  static tmpdir dir;
  static std::string model = [] {
    std::string corpus = "/usr/share/common-licenses/GPL-3";
    if (!fs::exists(corpus)) {
      corpus = dir / "corpus.txt";
      std::string text;
      for (int i = 0; i < 400; ++i)
        text += "The quick brown fox " + std::to_string(i) + " jumps over the lazy dog, again and again.\n";
      write_file(corpus, text);
    }
    const auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus + " --model_prefix=" + (dir / "tok") +
        " --vocab_size=400 --model_type=bpe --byte_fallback=true --character_coverage=1.0"
        " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --split_digits=true"
        " --normalization_rule_name=identity --remove_extra_whitespaces=false"
        " --allow_whitespace_only_pieces=true --num_threads=1 --minloglevel=2");
    REQUIRE_MESSAGE(st.ok(), st.ToString());
    return dir / "tok.model";
  }();
  return model;
}

// The checkpoint's configuration and weights (as stored, i.e. already rounded to their dtype).
struct checkpoint {
  int64_t dim = 64, layers = 2, heads = 4, kv_heads = 2, ff = 160, vocab = 400, ctx = 128;
  double eps = 1e-5, theta = 10000.0;
  // Llama-3: rope_scaling llama3 (factor 0: none) and a byte-level BPE tokenizer.json
  double l3_factor = 0, l3_low = 1, l3_high = 4, l3_original = 64;
  bool bpe = false;
  std::map<std::string, std::vector<float>> w;
  std::map<std::string, std::vector<int64_t>> shape;
  std::map<std::string, safetensors::dtype> dtype;
  std::map<std::string, int> shard;  // 1 or 2

  checkpoint() {
    std::mt19937 rng(7);
    const int64_t hd = dim / heads, kv = hd * kv_heads;
    auto add = [&](const std::string& name, std::vector<int64_t> sh, float mean, float sd, int s) {
      int64_t n = 1;
      for (int64_t d : sh) n *= d;
      std::normal_distribution<float> g(mean, sd);
      std::vector<float> v(static_cast<std::size_t>(n));
      const auto dt = s == 1 ? safetensors::dtype::f16 : safetensors::dtype::bf16;
      for (float& x : v) {
        const float r = g(rng);
        x = dt == safetensors::dtype::f16 ? fp16_to_fp32(fp32_to_fp16(r)) : bf16_to_fp32(fp32_to_bf16(r));
      }
      w[name] = std::move(v);
      shape[name] = std::move(sh);
      dtype[name] = dt;
      shard[name] = s;
    };
    const float sd = 1.0f / std::sqrt(float(dim));
    add("model.embed_tokens.weight", {vocab, dim}, 0, 0.5f, 1);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const int s = l == 0 ? 1 : 2;
      add(p + "input_layernorm.weight", {dim}, 1, 0.1f, s);
      add(p + "self_attn.q_proj.weight", {dim, dim}, 0, 2 * sd, s);
      add(p + "self_attn.k_proj.weight", {kv, dim}, 0, 2 * sd, s);
      add(p + "self_attn.v_proj.weight", {kv, dim}, 0, sd, s);
      add(p + "self_attn.o_proj.weight", {dim, dim}, 0, sd / 2, s);
      add(p + "post_attention_layernorm.weight", {dim}, 1, 0.1f, s);
      add(p + "mlp.gate_proj.weight", {ff, dim}, 0, sd, s);
      add(p + "mlp.up_proj.weight", {ff, dim}, 0, sd, s);
      add(p + "mlp.down_proj.weight", {dim, ff}, 0, 0.5f / std::sqrt(float(ff)), s);
    }
    add("model.norm.weight", {dim}, 1, 0.1f, 2);
    add("lm_head.weight", {vocab, dim}, 0, 3 * sd, 2);
  }

  json config() const {
    json c = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_act", "silu"},
              {"hidden_size", dim}, {"intermediate_size", ff}, {"num_hidden_layers", layers},
              {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads}, {"rms_norm_eps", eps},
              {"rope_theta", theta}, {"max_position_embeddings", ctx}, {"vocab_size", vocab},
              {"tie_word_embeddings", false}, {"torch_dtype", "float16"}};
    if (l3_factor > 0)
      c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", l3_factor}, {"low_freq_factor", l3_low},
                           {"high_freq_factor", l3_high}, {"original_max_position_embeddings", l3_original}};
    return c;
  }
  // Hugging Face's inverse frequency of pair i (transformers' _compute_llama3_parameters when
  // rope_scaling is llama3)
  double inv_freq(int64_t i, int64_t hd) const {
    const double f = std::pow(theta, -2.0 * double(i) / double(hd));
    if (l3_factor <= 0) return f;
    const double pi = 3.14159265358979323846, wavelen = 2 * pi / f;
    if (wavelen > l3_original / l3_low) return f / l3_factor;
    if (wavelen < l3_original / l3_high) return f;
    const double smooth = (l3_original / wavelen - l3_low) / (l3_high - l3_low);
    return (1 - smooth) * f / l3_factor + smooth * f;
  }
  // A Llama-3-style tokenizer.json of `vocab` tokens (tests/llama3_fixture.hpp).
  json bpe_tokenizer_json() const { return fixture::llama3_tokenizer_json(vocab); }

  // config.json, two shards, the index, tokenizer.model; `skip` leaves a tensor out.
  void write(const std::string& dir, const std::string& skip = "") const {
    write_file(dir + "/config.json", config().dump(2));
    if (bpe) {
      write_file(dir + "/tokenizer.json", bpe_tokenizer_json().dump());
      write_file(dir + "/tokenizer_config.json",
                 json{{"bos_token", "<|begin_of_text|>"}, {"eos_token", {{"content", "<|eot_id|>"}}},
                      {"chat_template", "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                                        "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"}}
                     .dump());
    } else {
      fs::copy_file(trained_tokenizer(), dir + "/tokenizer.model", fs::copy_options::overwrite_existing);
    }
    json map = json::object();
    for (int s = 1; s <= 2; ++s) {
      std::vector<safetensors::tensor_spec> specs;
      std::vector<const std::vector<float>*> vals;
      const std::string file = "model-0000" + std::to_string(s) + "-of-00002.safetensors";
      for (const auto& [name, v] : w) {
        if (shard.at(name) != s || name == skip) continue;
        specs.push_back({name, dtype.at(name), shape.at(name)});
        vals.push_back(&v);
        map[name] = file;
      }
      safetensors::write(dir + "/" + file, specs,
                         [&](std::size_t i, float* out) { std::copy(vals[i]->begin(), vals[i]->end(), out); });
    }
    write_file(dir + "/model.safetensors.index.json", json{{"metadata", json::object()}, {"weight_map", map}}.dump(2));
  }

  // Logits of every position, Hugging Face's Llama in double precision: rotate-half RoPE on the
  // Q/K projections as stored (no permutation), grouped-query attention, SwiGLU.
  std::vector<double> reference_logits(const std::vector<int32_t>& toks) const {
    const int64_t hd = dim / heads, half = hd / 2, kvd = hd * kv_heads, T = int64_t(toks.size());
    auto W = [&](const std::string& n) -> const std::vector<float>& { return w.at(n); };
    auto matvec = [&](const std::vector<float>& m, int64_t rows, int64_t cols, const std::vector<double>& x) {
      std::vector<double> y(static_cast<std::size_t>(rows), 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) y[r] += double(m[r * cols + c]) * x[c];
      return y;
    };
    auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& g) {
      double ss = 0;
      for (double v : x) ss += v * v;
      const double s = 1.0 / std::sqrt(ss / double(x.size()) + eps);
      std::vector<double> y(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * g[i];
      return y;
    };
    auto rope = [&](std::vector<double>& v, int64_t n_heads, int64_t pos) {
      for (int64_t h = 0; h < n_heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(pos) * inv_freq(i, hd);
          double& x0 = v[h * hd + i];
          double& x1 = v[h * hd + i + half];
          const double r0 = x0 * std::cos(a) - x1 * std::sin(a), r1 = x1 * std::cos(a) + x0 * std::sin(a);
          x0 = r0, x1 = r1;
        }
    };
    std::vector<std::vector<double>> x(static_cast<std::size_t>(T), std::vector<double>(dim));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < dim; ++i) x[t][i] = W("model.embed_tokens.weight")[toks[t] * dim + i];
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(T), k(T), v(T);
      for (int64_t t = 0; t < T; ++t) {
        const auto h = rmsnorm(x[t], W(p + "input_layernorm.weight"));
        q[t] = matvec(W(p + "self_attn.q_proj.weight"), dim, dim, h);
        k[t] = matvec(W(p + "self_attn.k_proj.weight"), kvd, dim, h);
        v[t] = matvec(W(p + "self_attn.v_proj.weight"), kvd, dim, h);
        rope(q[t], heads, t);
        rope(k[t], kv_heads, t);
      }
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> y(dim, 0.0);
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kv_heads);
          std::vector<double> s(static_cast<std::size_t>(t + 1));
          double mx = -1e300;
          for (int64_t u = 0; u <= t; ++u) {
            double d = 0;
            for (int64_t i = 0; i < hd; ++i) d += q[t][h * hd + i] * k[u][g * hd + i];
            s[u] = d / std::sqrt(double(hd));
            mx = std::max(mx, s[u]);
          }
          double z = 0;
          for (double& e : s) z += (e = std::exp(e - mx));
          for (int64_t u = 0; u <= t; ++u)
            for (int64_t i = 0; i < hd; ++i) y[h * hd + i] += s[u] / z * v[u][g * hd + i];
        }
        const auto o = matvec(W(p + "self_attn.o_proj.weight"), dim, dim, y);
        for (int64_t i = 0; i < dim; ++i) x[t][i] += o[i];
        const auto h2 = rmsnorm(x[t], W(p + "post_attention_layernorm.weight"));
        const auto gt = matvec(W(p + "mlp.gate_proj.weight"), ff, dim, h2);
        const auto up = matvec(W(p + "mlp.up_proj.weight"), ff, dim, h2);
        std::vector<double> a(static_cast<std::size_t>(ff));
        for (int64_t i = 0; i < ff; ++i) a[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
        const auto d = matvec(W(p + "mlp.down_proj.weight"), dim, ff, a);
        for (int64_t i = 0; i < dim; ++i) x[t][i] += d[i];
      }
    }
    std::vector<double> out;
    for (int64_t t = 0; t < T; ++t) {
      const auto lg = matvec(W("lm_head.weight"), vocab, dim, rmsnorm(x[t], W("model.norm.weight")));
      out.insert(out.end(), lg.begin(), lg.end());
    }
    return out;
  }
};

struct agreement {
  double rel_rms = 0;
  double top1 = 0;  // fraction of positions with the same argmax
};

agreement compare(const std::vector<float>& got, const std::vector<double>& ref, int64_t vocab) {
  double num = 0, den = 0;
  int64_t same = 0, n = int64_t(ref.size()) / vocab;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += ref[i] * ref[i];
  }
  for (int64_t t = 0; t < n; ++t) {
    const auto* g = got.data() + t * vocab;
    const auto* r = ref.data() + t * vocab;
    same += std::max_element(g, g + vocab) - g == std::max_element(r, r + vocab) - r;
  }
  return {std::sqrt(num / den), double(same) / double(n)};
}

std::vector<float> qllm_logits(const std::string& gguf, const std::vector<int32_t>& toks) {
  auto m = model::load(gguf);
  context_params cp;
  cp.n_threads = 1;
  cp.kv = kv_type::f32;
  context c(m, cp);
  const auto lg = c.eval(toks, true);
  return {lg.begin(), lg.end()};
}

const std::vector<int32_t> kTokens = {1, 57, 300, 12, 99, 251, 7, 388, 140, 42, 310, 5, 77, 201, 399, 3};

// Runs a conversion that must fail; checks the code, the message and that nothing was left behind.
void expect_failure(const std::string& dir, errc code, const std::string& needle, const convert::options& opt = {}) {
  const std::string out = dir + "/out/model.gguf";
  fs::create_directories(dir + "/out");
  bool threw = false;
  try {
    convert::convert(dir, out, opt);
  } catch (const error& e) {
    threw = true;
    CHECK_MESSAGE(e.code() == code, e.what());
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
  CHECK_MESSAGE(threw, "expected an error containing: " << needle);
  CHECK(fs::is_empty(dir + "/out"));  // neither the output nor a temporary file
}

}  // namespace

TEST_CASE("convert: Q/K permutation pairs rows i and i + head_dim/2 of each head") {
  // 2 heads of 4 rows, rows of 1 value equal to their index
  const float src[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  float dst[8];
  convert::permute_rows_for_rope(src, dst, 8, 1, 2);
  const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int i = 0; i < 8; ++i) CHECK(dst[i] == want[i]);
}

TEST_CASE("convert: a sharded F16/BF16 checkpoint matches Hugging Face semantics in double precision") {
  tmpdir d;
  const checkpoint ck;
  ck.write(d.path);
  const auto ref = ck.reference_logits(kTokens);

  const auto plan = convert::make_plan(d.path, {});
  CHECK(plan.tensors.size() == 3 + 9 * std::size_t(ck.layers));
  CHECK(plan.vocab_pieces == 400);

  convert::options f32;
  f32.type = ggml_type::f32;
  convert::convert(d.path, d / "f32.gguf", f32);
  const agreement a = compare(qllm_logits(d / "f32.gguf", kTokens), ref, ck.vocab);
  MESSAGE("f32: relative RMS " << a.rel_rms << ", top-1 " << a.top1);
  CHECK(a.rel_rms < 1e-4);  // f32 arithmetic against double, same weights
  CHECK(a.top1 == 1.0);

  SUBCASE("without the Q/K permutation the logits are wrong (the test can fail)") {
    convert::options raw = f32;
    raw.permute_qk = false;
    convert::convert(d.path, d / "raw.gguf", raw);
    const agreement b = compare(qllm_logits(d / "raw.gguf", kTokens), ref, ck.vocab);
    MESSAGE("unpermuted: relative RMS " << b.rel_rms);
    CHECK(b.rel_rms > 100 * a.rel_rms);
    CHECK(b.rel_rms > 1e-2);
  }
  SUBCASE("f16, q8_0 and q4_0 within their budgets") {
    const std::pair<ggml_type, double> budgets[] = {
        // measured: f16 3.7e-7 (the BF16 shard's values are exact in f16), bf16 0.0056, q8_0 0.028
        // (weights and activations at 8 bits), q4_0 0.33 (random Gaussian weights at 4 bits, two
        // layers of error growth: the trained model's perplexity tests bound the real-world cost)
        {ggml_type::f16, 1e-5}, {ggml_type::bf16, 0.02}, {ggml_type::q8_0, 0.06}, {ggml_type::q4_0, 0.5}};
    for (const auto& [t, budget] : budgets) {
      convert::options o;
      o.type = t;
      convert::convert(d.path, d / "q.gguf", o);
      const agreement q = compare(qllm_logits(d / "q.gguf", kTokens), ref, ck.vocab);
      MESSAGE(std::string(gguf::type_name(t)) << ": relative RMS " << q.rel_rms << ", top-1 " << q.top1);
      CHECK(q.rel_rms < budget);
    }
  }
  SUBCASE("the vocabulary encodes like tokenizer.model") {
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(d / "tokenizer.model").ok());
    const auto m = model::load(d / "f32.gguf");
    const tokenizer* tok = m->get_tokenizer();
    REQUIRE(tok != nullptr);
    CHECK(tok->n_vocab() == sp.GetPieceSize());
    for (const char* text : {"This License applies to any program.", "  two  spaces, digits 12345 and ümlauts ✓",
                             "\n\tcontrol\r\n", "GNU General Public License version 3"}) {
      std::vector<int> want;
      REQUIRE(sp.Encode(text, &want).ok());
      const auto got = tok->encode(text, false);
      CHECK(std::vector<int32_t>(want.begin(), want.end()) == got);
      CHECK(tok->decode(got) == text);
    }
  }
}

TEST_CASE("convert: a Llama-3 checkpoint (tokenizer.json, llama3 rope_scaling) matches Hugging Face semantics") {
  tmpdir d;
  checkpoint ck;
  ck.bpe = true;
  ck.theta = 500000.0;  // with head size 16 and original context 64: one pair kept, one interpolated, six divided
  ck.l3_factor = 8.0;
  ck.write(d.path);
  convert::options f32;
  f32.type = ggml_type::f32;
  convert::convert(d.path, d / "l3.gguf", f32);
  const auto got = qllm_logits(d / "l3.gguf", kTokens);
  const agreement a = compare(got, ck.reference_logits(kTokens), ck.vocab);
  checkpoint unscaled = ck;
  unscaled.l3_factor = 0;
  const agreement b = compare(got, unscaled.reference_logits(kTokens), ck.vocab);
  MESSAGE("llama3 rope_scaling: relative RMS " << a.rel_rms << " (against the unscaled reference " << b.rel_rms << ")");
  CHECK(a.rel_rms < 1e-4);
  CHECK(a.top1 == 1.0);
  CHECK(b.rel_rms > 100 * a.rel_rms);  // the scaling matters at these positions: the test can fail

  const auto f = gguf::file::open(d / "l3.gguf");
  CHECK(f.get_string("tokenizer.ggml.model") == "gpt2");
  CHECK(f.get_string("tokenizer.ggml.pre") == "llama-bpe");
  CHECK(f.find_tensor("rope_freqs.weight") != nullptr);
  const auto m = model::load(d / "l3.gguf");
  const tokenizer* tok = m->get_tokenizer();
  REQUIRE(tok != nullptr);
  CHECK(tok->kind() == tokenizer_kind::llama3_bpe);
  CHECK(tok->n_vocab() == 400);
  CHECK(tok->piece(tok->bos()) == "<|begin_of_text|>");
  CHECK(tok->piece(tok->eos()) == "<|eot_id|>");  // tokenizer_config.json's eos_token
  CHECK(chat_format_of(*tok) == chat_format::llama3);  // its chat_template, carried over
  const auto direct = tokenizer::from_vocabulary(vocabulary_from_hf_json(d / "tokenizer.json"));
  for (const char* text : {"the rain in spain", "  two  spaces, digits 12345 and ümlauts ✓", "\n\tcontrol\r\n"}) {
    CAPTURE(text);
    CHECK(tok->encode(text, true) == direct->encode(text, true));
    CHECK(tok->decode(tok->encode(text, false)) == text);
  }

  // tokenizer.json files of another kind are refused, naming what differs
  const auto refused = [&](json tj, errc code, const char* what) {
    CAPTURE(what);
    write_file(d / "t.json", tj.dump());
    try {
      (void)vocabulary_from_hf_json(d / "t.json");
      FAIL("accepted");
    } catch (const error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
  };
  const json good = ck.bpe_tokenizer_json();
  json t2 = good;
  t2["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  refused(t2, errc::unsupported, "is not Llama-3's");
  t2 = good;
  std::swap(t2["pre_tokenizer"]["pretokenizers"][0], t2["pre_tokenizer"]["pretokenizers"][1]);
  refused(t2, errc::unsupported, "is not Llama-3's");
  t2 = good;
  t2["model"]["dropout"] = 0.9;
  refused(t2, errc::unsupported, "dropout");
  t2 = good;
  t2["model"]["end_of_word_suffix"] = "</w>";
  refused(t2, errc::unsupported, "end_of_word_suffix");
  t2 = good;
  t2["model"]["vocab"]["a"] = 97.9;
  refused(t2, errc::bad_format, "not an integer");
  t2 = good;
  t2["model"]["vocab"]["a"] = 5;  // id 5 twice, 97 missing
  refused(t2, errc::bad_format, "given twice");
  write_file(d / "deep.json", std::string(100000, '['));
  CHECK_THROWS_WITH_AS((void)vocabulary_from_hf_json(d / "deep.json"), doctest::Contains("nested more than 64"), error);
  REQUIRE(::mkfifo((d / "fifo.json").c_str(), 0600) == 0);
  CHECK_THROWS_WITH_AS((void)vocabulary_from_hf_json(d / "fifo.json"), doctest::Contains("not a regular file"), error);

  // rope_scaling llama3 with missing or inconsistent parameters is refused by name
  checkpoint broken = ck;
  broken.l3_high = 0.5;  // below low_freq_factor
  tmpdir e;
  broken.write(e.path);
  CHECK_THROWS_WITH_AS(convert::make_plan(e.path, {}), doctest::Contains("high_freq_factor"), error);
}

TEST_CASE("convert: gen-random's Llama-3 Hugging Face directory converts back to its vocabulary and RoPE factors") {
  tmpdir d;
  write_file(d / "tokenizer.json", fixture::llama3_tokenizer_json(600).dump());
  vocabulary v = vocabulary_from_hf_json(d / "tokenizer.json");
  v.chat_template = "{{ bos_token }}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>";
  // the tokenizer.json writer is the reader's inverse
  write_file(d / "again.json", hf_json_of_vocabulary(v));
  const vocabulary back = vocabulary_from_hf_json(d / "again.json");
  CHECK(back.pieces == v.pieces);
  CHECK(back.types == v.types);
  CHECK(back.merges == v.merges);
  CHECK(back.bos_id == v.bos_id);
  CHECK(back.eot_id == v.eot_id);
  CHECK_THROWS_AS((void)hf_json_of_vocabulary(random_vocabulary(300)), error);

  random_model_spec spec = random_model_preset("llama3-tiny");
  spec.vocab = std::make_shared<const vocabulary>(v);
  spec.n_vocab = int64_t(v.pieces.size());
  const std::string hf = d / "hf";
  fs::create_directories(hf);
  write_random_hf(hf, spec, "F32", 1);
  const json cfg = json::parse(read_file(hf + "/config.json"));
  CHECK(cfg["rope_scaling"]["rope_type"] == "llama3");
  CHECK(cfg["rope_theta"] == 500000.0);
  CHECK(fs::exists(hf + "/tokenizer_config.json"));
  CHECK(!fs::exists(hf + "/tokenizer.model"));
  convert::options o;
  o.type = ggml_type::f32;
  (void)convert::convert(hf, d / "m.gguf", o);
  const auto m = model::load(d / "m.gguf");
  // the factors convert computes from rope_scaling are the ones the preset wrote
  REQUIRE(m->config().rope_freq_factors.size() == spec.rope_freqs.size());
  for (std::size_t i = 0; i < spec.rope_freqs.size(); ++i)
    CHECK(m->config().rope_freq_factors[i] == doctest::Approx(spec.rope_freqs[i]).epsilon(1e-6));
  const tokenizer& t = *m->get_tokenizer();
  const auto direct = tokenizer::from_vocabulary(v);
  CHECK(t.kind() == tokenizer_kind::llama3_bpe);
  CHECK(t.encode("hello there, 123 world", true) == direct->encode("hello there, 123 world", true));
  CHECK(chat_format_of(t) == chat_format::llama3);
  CHECK(m->config().rope_freq_base == 500000.0f);
  // rope_freqs that no llama3 rope_scaling gives are refused, not written as something else
  random_model_spec odd = spec;
  odd.rope_freqs[0] = 3.0f;
  CHECK_THROWS_WITH_AS(write_random_hf(d / "hf2", odd, "F32", 1), doctest::Contains("rope_freqs differ"), error);
  odd.llama3_rope = {};
  CHECK_THROWS_WITH_AS(write_random_hf(d / "hf2", odd, "F32", 1), doctest::Contains("without the llama3"), error);
}

TEST_CASE("convert: the output is written atomically") {
  tmpdir d;
  const checkpoint ck;
  ck.write(d.path);
  write_file(d / "existing.gguf", "old contents");
  convert::options bad;
  bad.type = ggml_type::q4_0;
  bad.on_progress = [](const convert::progress& p) {
    if (p.done == 5) throw error(errc::io, "interrupted");
  };
  CHECK_THROWS_WITH_AS(convert::convert(d.path, d / "existing.gguf", bad), "interrupted", error);
  CHECK(read_file(d / "existing.gguf") == "old contents");  // untouched
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(d.path)) files += e.path().filename().string().rfind("existing.gguf", 0) == 0;
  CHECK(files == 1);  // no temporary file left
  std::vector<convert::progress> seen;
  convert::options ok;
  ok.on_progress = [&](const convert::progress& p) { seen.push_back(p); };
  convert::convert(d.path, d / "existing.gguf", ok);
  REQUIRE(seen.size() == 3 + 9 * std::size_t(ck.layers));
  CHECK(seen.back().done == seen.back().total);
  CHECK(seen.back().bytes_done == seen.back().bytes_total);
  CHECK(model::load(d / "existing.gguf")->config().n_layer == ck.layers);
}

TEST_CASE("convert: corrupt or unsupported checkpoints are clear errors and leave nothing behind") {
  const checkpoint ck;
  tmpdir d;
  ck.write(d.path);
  const std::string shard2 = d / "model-00002-of-00002.safetensors";
  const std::string good2 = read_file(shard2);
  const std::string good_config = read_file(d / "config.json");
  const std::string good_index = read_file(d / "model.safetensors.index.json");
  auto restore = [&] {
    write_file(shard2, good2);
    write_file(d / "config.json", good_config);
    write_file(d / "model.safetensors.index.json", good_index);
  };
  auto raw_shard = [&](const std::string& header, std::size_t data_bytes) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = char(uint64_t(header.size()) >> (8 * i));
    write_file(shard2, s + header + std::string(data_bytes, '\0'));
  };

  SUBCASE("truncated shard") {
    write_file(shard2, good2.substr(0, good2.size() - 100));
    expect_failure(d.path, errc::bad_format, "outside the data");
  }
  SUBCASE("header length beyond the file") {
    std::string s = good2;
    s[5] = 1;
    write_file(shard2, s);
    expect_failure(d.path, errc::bad_format, "beyond the end of the file");
  }
  SUBCASE("data offsets that overlap") {
    raw_shard(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
    expect_failure(d.path, errc::bad_format, "overlaps");
  }
  SUBCASE("data with a hole between tensors") {
    raw_shard(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12);
    expect_failure(d.path, errc::bad_format, "hole");
  }
  SUBCASE("shape and data_offsets disagree") {
    raw_shard(R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", 8);
    expect_failure(d.path, errc::bad_format, "shape needs 6 bytes");
  }
  SUBCASE("unsupported dtypes: I8 and F64") {
    raw_shard(R"({"a":{"dtype":"I8","shape":[8],"data_offsets":[0,8]}})", 8);
    expect_failure(d.path, errc::unsupported, "dtype I8");
    raw_shard(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
    expect_failure(d.path, errc::unsupported, "dtype F64");
  }
  SUBCASE("malformed JSON: shard header, config.json, index") {
    raw_shard(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4);
    expect_failure(d.path, errc::bad_format, "not valid JSON");
    restore();
    write_file(d / "config.json", "{\"hidden_size\": 64,");
    expect_failure(d.path, errc::bad_format, "config.json' is not valid JSON");
    restore();
    write_file(d / "model.safetensors.index.json", "[1, 2");
    expect_failure(d.path, errc::bad_format, "index.json' is not valid JSON");
  }
  SUBCASE("a tensor missing from the index, or from the checkpoint") {
    json idx = json::parse(good_index);
    idx["weight_map"].erase("model.layers.1.mlp.up_proj.weight");
    write_file(d / "model.safetensors.index.json", idx.dump());
    expect_failure(d.path, errc::bad_format, "that the index does not list");
    tmpdir d2;
    ck.write(d2.path, "model.layers.1.mlp.up_proj.weight");
    expect_failure(d2.path, errc::bad_format, "'model.layers.1.mlp.up_proj.weight' is missing");
  }
  SUBCASE("the index points at a file outside the directory") {
    json idx = json::parse(good_index);
    idx["weight_map"]["model.norm.weight"] = "../model-00002-of-00002.safetensors";
    write_file(d / "model.safetensors.index.json", idx.dump());
    expect_failure(d.path, errc::bad_format, "is not a file name in the directory");
  }
  SUBCASE("a shape that disagrees with config.json") {
    json c = ck.config();
    c["intermediate_size"] = 192;
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::bad_format, "config.json implies [192, 64]");
  }
  SUBCASE("architectures, rope scaling and settings qllm does not support") {
    json c = ck.config();
    c["architectures"] = {"MistralForCausalLM"};
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::unsupported, "MistralForCausalLM is not supported");
    c = ck.config();
    c["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::unsupported, "rope_scaling");
    c = ck.config();
    c["num_key_value_heads"] = 3;
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::bad_format, "not a multiple of num_key_value_heads");
    c = ck.config();
    c["vocab_size"] = 500;
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::unsupported, "the tokenizer has 400 pieces");
  }
  SUBCASE("NaN and Inf weights: a warning naming the tensor, an error with strict") {
    checkpoint nan = ck;
    nan.w["model.layers.1.self_attn.v_proj.weight"][17] = NAN;
    nan.w["model.layers.1.self_attn.v_proj.weight"][40] = INFINITY;
    tmpdir d3;
    nan.write(d3.path);
    std::vector<std::string> warnings;
    convert::options warn;
    warn.on_warning = [&](const std::string& w) { warnings.push_back(w); };
    convert::convert(d3.path, d3 / "warned.gguf", warn);
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("'model.layers.1.self_attn.v_proj.weight' has 2 NaN/Inf values") != std::string::npos);
    fs::remove(d3 / "warned.gguf");
    convert::options strict;
    strict.strict = true;
    expect_failure(d3.path, errc::bad_format, "'model.layers.1.self_attn.v_proj.weight' has 2 NaN/Inf", strict);
  }
  SUBCASE("a FIFO or a directory where a file should be: an error, not a hang") {
    fs::remove(d / "config.json");
    REQUIRE(mkfifo((d / "config.json").c_str(), 0600) == 0);
    expect_failure(d.path, errc::io, "config.json' is not a regular file");
    fs::remove(d / "config.json");
    write_file(d / "config.json", good_config);
    fs::remove(shard2);
    REQUIRE(mkfifo(shard2.c_str(), 0600) == 0);
    expect_failure(d.path, errc::io, "is not a regular file");
    fs::remove(shard2);
    write_file(shard2, good2);
    fs::remove(d / "tokenizer.model");
    fs::create_directory(d / "tokenizer.model");
    expect_failure(d.path, errc::io, "tokenizer.model' is not a regular file");
  }
  SUBCASE("deeply nested JSON and shapes whose byte count overflows") {
    raw_shard("{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}", 0);
    expect_failure(d.path, errc::bad_format, "nests deeper");
    raw_shard(R"({"a":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})", 0);
    expect_failure(d.path, errc::bad_format, "shape is too large");
  }
  SUBCASE("values the loader would reject are refused here") {
    for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
             {"rope_theta", 1e39}, {"rope_theta", 0.5}, {"rms_norm_eps", 5.0}, {"max_position_embeddings", 20000000}}) {
      json c = ck.config();
      c[key] = value;
      write_file(d / "config.json", c.dump());
      expect_failure(d.path, errc::bad_format, key);
    }
    json c = ck.config();
    c["rope_scaling"] = {{"type", "linear"}, {"rope_type", "llama3"}, {"factor", 8.0}};
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::bad_format, "rope_type 'llama3' and type 'linear'");
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 1e6}};
    write_file(d / "config.json", c.dump());
    expect_failure(d.path, errc::bad_format, "rope_scaling.factor");
  }
  SUBCASE("rope_scaling 'default' is no scaling; 'linear' is written as llama.rope.scaling") {
    json c = ck.config();
    c["rope_scaling"] = {{"rope_type", "default"}};
    write_file(d / "config.json", c.dump());
    CHECK(convert::make_plan(d.path, {}).config.rope_linear_factor == 0);
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
    write_file(d / "config.json", c.dump());
    convert::convert(d.path, d / "linear.gguf", {});
    CHECK(model::load(d / "linear.gguf")->config().rope_freq_scale == 0.5f);
  }
  SUBCASE("the output may not be an input or a directory") {
    CHECK_THROWS_WITH_AS(convert::convert(d.path, shard2, {}), doctest::Contains("is an input of the conversion"), error);
    CHECK(read_file(shard2) == good2);
    fs::create_directory(d / "outdir");
    CHECK_THROWS_WITH_AS(convert::convert(d.path, d / "outdir", {}), doctest::Contains("is a directory"), error);
  }
  SUBCASE("no tokenizer.model, no weights") {
    fs::remove(d / "tokenizer.model");
    expect_failure(d.path, errc::io, "neither tokenizer.model");
    tmpdir empty;
    write_file(empty / "config.json", good_config);
    expect_failure(empty.path, errc::io, "no model.safetensors");
  }
}
