// Seeded random Llama GGUF files. Values come from a counter-based hash, so every tensor is
// generated independently and streamed straight into the file (the 7B file never sits in memory).
#include "qllm/random_model.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/quantize.hpp"
#include "convert/encode.hpp"
#include "qllm/safetensors.hpp"
#include "text/bpe.hpp"
#include "text/sp_proto.hpp"

namespace qllm {

random_model_spec random_model_preset(std::string_view name) {
  random_model_spec s;
  if (name == "tiny") return s;
  if (name == "small") {
    s.n_vocab = 2048, s.n_embd = 256, s.n_layer = 4, s.n_ff = 704, s.n_head = 8, s.n_head_kv = 2;
    s.n_ctx = 1024;
    return s;
  }
  if (name == "7b") {
    s.n_vocab = 32000, s.n_embd = 4096, s.n_layer = 32, s.n_ff = 11008, s.n_head = 32;
    s.n_head_kv = 32, s.n_ctx = 4096;
    return s;
  }
  if (name == "codellama-7b" || name == "codellama-tiny") {
    // Code Llama: Llama-2 with RoPE base 1e6, a 16k context and 16 more pieces (infilling)
    if (name == "codellama-7b") {
      s.n_vocab = 32016, s.n_embd = 4096, s.n_layer = 32, s.n_ff = 11008, s.n_head = 32, s.n_head_kv = 32;
    }
    s.n_ctx = 16384, s.rope_freq_base = 1000000.0f;
    return s;
  }
  if (name == "llama3-8b" || name == "llama3-1b" || name == "llama3-tiny") {
    s.n_vocab = 128256, s.rope_freq_base = 500000.0f;
    double original = 8192;
    if (name == "llama3-8b") {
      s.n_embd = 4096, s.n_layer = 32, s.n_ff = 14336, s.n_head = 32, s.n_head_kv = 8, s.n_ctx = 131072;
    } else if (name == "llama3-1b") {
      s.n_embd = 2048, s.n_layer = 16, s.n_ff = 8192, s.n_head = 32, s.n_head_kv = 8, s.n_ctx = 131072;
      s.tied_output = true;
    } else {
      s.n_embd = 64, s.n_layer = 2, s.n_ff = 160, s.n_head = 4, s.n_head_kv = 2, s.n_ctx = 256;
      s.tied_output = true;
      original = 64;
    }
    s.llama3_rope = {8.0, 1.0, 4.0, original};
    s.rope_freqs = llama3_rope_factors(s.n_embd / s.n_head, s.rope_freq_base, 8.0, 1.0, 4.0, original);
    return s;
  }
  throw error(errc::invalid_argument, "random model: unknown preset '" + std::string(name) +
                                          "' (tiny, small, 7b, codellama-7b, codellama-tiny, llama3-8b, llama3-1b, llama3-tiny)");
}

std::vector<float> llama3_rope_factors(int64_t head_dim, double base, double factor, double low, double high,
                                       double original_ctx) {
  if (head_dim < 2 || head_dim % 2 || !(base > 1) || !(factor >= 1) || !(low > 0) || !(high > low) || !(original_ctx > 0))
    throw error(errc::invalid_argument, "llama3 RoPE factors: inconsistent parameters");
  std::vector<float> f;
  const double pi = 3.14159265358979323846;
  for (int64_t i = 0; i < head_dim; i += 2) {
    const double freq = std::pow(base, -double(i) / double(head_dim)), wavelen = 2 * pi / freq;
    if (wavelen < original_ctx / high) {
      f.push_back(1.0f);
    } else if (wavelen > original_ctx / low) {
      f.push_back(float(factor));
    } else {
      const double smooth = (original_ctx / wavelen - low) / (high - low);
      f.push_back(float(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return f;
}

namespace {

uint64_t mix(uint64_t z) {  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform values with standard deviation `sd` (and mean `mean`), element i of stream `stream`.
void fill_row(float* out, int64_t n, uint64_t stream, int64_t row, float mean, float sd) {
  const float a = sd * std::sqrt(3.0f);
  const uint64_t base = mix(stream * 0x9e3779b97f4a7c15ull + uint64_t(row));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = mix(base + uint64_t(i));
    out[i] = mean + a * (float(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

}  // namespace

vocabulary random_vocabulary(int64_t n_vocab) {
  // <unk>, <s>, </s>, 256 byte tokens, then synthetic pieces
  vocabulary v;
  auto add = [&](std::string piece, token_type t, float score) {
    v.pieces.push_back(std::move(piece));
    v.types.push_back(t);
    v.scores.push_back(score);
  };
  add("<unk>", token_type::unknown, 0.0f);
  add("<s>", token_type::control, 0.0f);
  add("</s>", token_type::control, 0.0f);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, token_type::byte, 0.0f);
  }
  for (int64_t id = 259; id < n_vocab; ++id) {
    // "▁" (U+2581, sentencepiece's space) alone first, so a space never falls back to bytes
    std::string piece = (id % 2) ? "\xe2\x96\x81" : "";
    for (int64_t x = id - 260; id > 259; x /= 26) {
      piece += char('a' + x % 26);
      if (x < 26) break;
    }
    add(std::move(piece), token_type::normal, -float(id - 259));
  }
  return v;
}

void write_random_model(const std::string& path, const random_model_spec& s) {
  const bool types_ok = encodable(s.type);
  const bool quant = s.type == ggml_type::q4_0 || s.type == ggml_type::q8_0;
  const bool kquant = s.type == ggml_type::q4_k || s.type == ggml_type::q5_k || s.type == ggml_type::q6_k;
  std::optional<quant::scheme> sch;
  if (!s.scheme.empty()) sch = quant::parse_scheme(s.scheme);
  if (s.vocab && int64_t(s.vocab->pieces.size()) != s.n_vocab)
    throw error(errc::invalid_argument, "random model: the vocabulary has " + std::to_string(s.vocab->pieces.size()) +
                                            " tokens, the spec " + std::to_string(s.n_vocab));
  if (!types_ok || s.n_vocab < 259 || s.n_embd < 2 || s.n_layer < 1 || s.n_ff < 1 || s.n_head < 1 ||
      s.n_head_kv < 1 || s.n_embd % s.n_head || s.n_head % s.n_head_kv || (s.n_embd / s.n_head) % 2 ||
      (!sch && quant && (s.n_embd % qk || s.n_ff % qk)))
    throw error(errc::invalid_argument, "random model: inconsistent spec");
  if (!sch && kquant && (s.n_embd % qk_k || s.n_ff % qk_k))
    throw error(errc::invalid_argument, "random model: " + std::string(gguf::type_name(s.type)) +
                                            " needs n_embd and n_ff multiples of 256 (have " +
                                            std::to_string(s.n_embd) + ", " + std::to_string(s.n_ff) +
                                            "); the mixes (q4_k_m, ...) fall back where they are not");
  const int64_t hd = s.n_embd / s.n_head, kv = hd * s.n_head_kv;

  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "qllm random " + std::to_string(s.n_embd) + "x" + std::to_string(s.n_layer));
  const uint32_t file_type = sch ? quant::file_type(*sch)
                             : s.type == ggml_type::q4_0 ? 2 : s.type == ggml_type::q8_0 ? 7
                             : s.type == ggml_type::q4_k ? 14 : s.type == ggml_type::q5_k ? 16
                             : s.type == ggml_type::q6_k ? 18
                             : s.type == ggml_type::f16 ? 1 : s.type == ggml_type::bf16 ? 32 : 0;
  w.set_u32("general.file_type", file_type);
  w.set_u32("llama.context_length", uint32_t(s.n_ctx));
  w.set_u32("llama.embedding_length", uint32_t(s.n_embd));
  w.set_u32("llama.block_count", uint32_t(s.n_layer));
  w.set_u32("llama.feed_forward_length", uint32_t(s.n_ff));
  w.set_u32("llama.rope.dimension_count", uint32_t(hd));
  w.set_u32("llama.attention.head_count", uint32_t(s.n_head));
  w.set_u32("llama.attention.head_count_kv", uint32_t(s.n_head_kv));
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32("llama.rope.freq_base", s.rope_freq_base);

  if (s.vocabulary && s.vocab && s.vocab->kind == tokenizer_kind::llama3_bpe) {
    text::write_bpe_vocabulary(w, *s.vocab);
  } else if (s.vocabulary && s.vocab) {
    throw error(errc::invalid_argument, "random model: only a byte-level BPE vocabulary can be given");
  } else if (s.vocabulary) {
    w.set_string("tokenizer.ggml.model", "llama");
    const vocabulary v = random_vocabulary(s.n_vocab);
    std::vector<int32_t> types;
    for (token_type t : v.types) types.push_back(int32_t(t));
    w.set_array_string("tokenizer.ggml.tokens", v.pieces);
    w.set_array_f32("tokenizer.ggml.scores", v.scores);
    w.set_array_i32("tokenizer.ggml.token_type", types);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
  }
  // overrides: the writer replaces the value of a key set again
  for (const auto& [k, v] : s.extra_strings) w.set_string(k, v);
  for (const auto& [k, v] : s.extra_f32) w.set_f32(k, v);
  for (const auto& [k, v] : s.extra_u64) w.set_u64(k, v);

  uint64_t stream = uint64_t(s.seed) << 32;
  auto matrix = [&](const std::string& name, int64_t k, int64_t n, float sd) {
    const uint64_t id = ++stream;
    int64_t layer = -1;
    if (name.rfind("blk.", 0) == 0) layer = std::stoll(name.substr(4));
    const ggml_type t = sch ? quant::tensor_type(*sch, name, k, 2, layer,
                                                 {s.n_layer, s.n_head_kv < s.n_head, s.tied_output})
                            : s.type;
    w.add_tensor_fn(name, t, {k, n}, [=](uint8_t* dst, std::size_t bytes) {
      std::vector<float> row(static_cast<std::size_t>(k));
      const std::size_t rb = encoded_row_bytes(t, k);
      for (int64_t r = 0; r < n && std::size_t(r + 1) * rb <= bytes; ++r) {
        fill_row(row.data(), k, id, r, 0.0f, sd);
        encode_row(t, row.data(), k, dst + std::size_t(r) * rb);
      }
    });
  };
  auto norm = [&](const std::string& name, int64_t n) {
    const uint64_t id = ++stream;
    w.add_tensor_fn(name, ggml_type::f32, {n}, [=](uint8_t* dst, std::size_t) {
      std::vector<float> v(static_cast<std::size_t>(n));
      fill_row(v.data(), n, id, 0, 1.0f, 0.1f);
      std::memcpy(dst, v.data(), v.size() * 4);
    });
  };
  const float sd_in = 1.0f / std::sqrt(float(s.n_embd));
  const float sd_res = sd_in / std::sqrt(2.0f * float(s.n_layer));  // residual growth stays bounded
  matrix("token_embd.weight", s.n_embd, s.n_vocab, 0.5f);
  if (!s.rope_freqs.empty()) {
    const std::vector<float> f = s.rope_freqs;
    w.add_tensor_fn("rope_freqs.weight", ggml_type::f32, {int64_t(f.size())},
                    [f](uint8_t* dst, std::size_t) { std::memcpy(dst, f.data(), f.size() * 4); });
  }
  norm("output_norm.weight", s.n_embd);
  if (!s.tied_output) matrix("output.weight", s.n_embd, s.n_vocab, 3.0f * sd_in);
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    norm(p + "attn_norm.weight", s.n_embd);
    matrix(p + "attn_q.weight", s.n_embd, s.n_embd, 2.0f * sd_in);
    matrix(p + "attn_k.weight", s.n_embd, kv, 2.0f * sd_in);
    matrix(p + "attn_v.weight", s.n_embd, kv, sd_in);
    matrix(p + "attn_output.weight", s.n_embd, s.n_embd, sd_res);
    norm(p + "ffn_norm.weight", s.n_embd);
    matrix(p + "ffn_gate.weight", s.n_embd, s.n_ff, sd_in);
    matrix(p + "ffn_up.weight", s.n_embd, s.n_ff, sd_in);
    matrix(p + "ffn_down.weight", s.n_ff, s.n_embd, 1.0f / std::sqrt(float(s.n_ff)) / std::sqrt(2.0f * float(s.n_layer)));
  }
  w.write(path);
}

void write_random_hf(const std::string& dir, const random_model_spec& s, const std::string& dtype, int shards) {
  if (s.n_vocab < 259 || s.n_embd < 2 || s.n_layer < 1 || s.n_ff < 1 || s.n_head < 1 || s.n_head_kv < 1 ||
      s.n_embd % s.n_head || s.n_head % s.n_head_kv || (s.n_embd / s.n_head) % 2 || shards < 1 || shards > 1000)
    throw error(errc::invalid_argument, "random model: inconsistent spec");
  // never a directory that silently differs from the spec
  const auto& l3 = s.llama3_rope;
  if (!s.rope_freqs.empty()) {
    if (l3.factor == 0)
      throw error(errc::unsupported, "random model: rope_freqs without the llama3 rope_scaling they come from "
                                     "cannot be written as a Hugging Face config.json");
    const auto want = llama3_rope_factors(s.n_embd / s.n_head, s.rope_freq_base, l3.factor, l3.low, l3.high, l3.original_ctx);
    if (want != s.rope_freqs)
      throw error(errc::unsupported, "random model: rope_freqs differ from the factors of the llama3 rope_scaling given");
  }
  if (s.vocab && s.vocab->kind != tokenizer_kind::llama3_bpe)
    throw error(errc::unsupported, "random model: a Hugging Face directory carries the synthetic sentencepiece "
                                   "vocabulary or a Llama-3 byte-level BPE one");
  if (s.vocab && int64_t(s.vocab->pieces.size()) != s.n_vocab)
    throw error(errc::invalid_argument, "random model: n_vocab differs from the vocabulary's size");
  safetensors::dtype dt;
  if (dtype == "F32") dt = safetensors::dtype::f32;
  else if (dtype == "F16") dt = safetensors::dtype::f16;
  else if (dtype == "BF16") dt = safetensors::dtype::bf16;
  else throw error(errc::invalid_argument, "random model: dtype '" + dtype + "' is not F32, F16 or BF16");
  const int64_t hd = s.n_embd / s.n_head, kv = hd * s.n_head_kv;
  struct entry {
    safetensors::tensor_spec spec;
    float mean, sd;
  };
  std::vector<entry> all;
  auto add = [&](std::string name, std::vector<int64_t> shape, float mean, float sd) {
    all.push_back({{std::move(name), dt, std::move(shape)}, mean, sd});
  };
  const float sd_in = 1.0f / std::sqrt(float(s.n_embd));
  const float sd_res = sd_in / std::sqrt(2.0f * float(s.n_layer));
  add("model.embed_tokens.weight", {s.n_vocab, s.n_embd}, 0.0f, 0.5f);
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.n_embd}, 1.0f, 0.1f);
    add(p + "self_attn.q_proj.weight", {s.n_embd, s.n_embd}, 0.0f, 2.0f * sd_in);
    add(p + "self_attn.k_proj.weight", {kv, s.n_embd}, 0.0f, 2.0f * sd_in);
    add(p + "self_attn.v_proj.weight", {kv, s.n_embd}, 0.0f, sd_in);
    add(p + "self_attn.o_proj.weight", {s.n_embd, s.n_embd}, 0.0f, sd_res);
    add(p + "post_attention_layernorm.weight", {s.n_embd}, 1.0f, 0.1f);
    add(p + "mlp.gate_proj.weight", {s.n_ff, s.n_embd}, 0.0f, sd_in);
    add(p + "mlp.up_proj.weight", {s.n_ff, s.n_embd}, 0.0f, sd_in);
    add(p + "mlp.down_proj.weight", {s.n_embd, s.n_ff}, 0.0f,
        1.0f / std::sqrt(float(s.n_ff)) / std::sqrt(2.0f * float(s.n_layer)));
  }
  add("model.norm.weight", {s.n_embd}, 1.0f, 0.1f);
  if (!s.tied_output) add("lm_head.weight", {s.n_vocab, s.n_embd}, 0.0f, 3.0f * sd_in);

  auto write_text = [&](const std::string& name, const std::string& text) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out << text;
    if (!out.flush()) throw error(errc::io, "random model: cannot write '" + dir + "/" + name + "'");
  };
  const int32_t bos = s.vocab ? s.vocab->bos_id : 1, eos = s.vocab ? s.vocab->eos_id : 2;
  nlohmann::json cfg = {
      {"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_act", "silu"},
      {"hidden_size", s.n_embd}, {"intermediate_size", s.n_ff}, {"num_hidden_layers", s.n_layer},
      {"num_attention_heads", s.n_head}, {"num_key_value_heads", s.n_head_kv}, {"rms_norm_eps", 1e-5},
      {"rope_theta", double(s.rope_freq_base)}, {"max_position_embeddings", s.n_ctx}, {"vocab_size", s.n_vocab},
      {"tie_word_embeddings", s.tied_output}, {"bos_token_id", bos}, {"eos_token_id", eos},
      {"torch_dtype", dtype == "F32" ? "float32" : dtype == "F16" ? "float16" : "bfloat16"}};
  if (l3.factor != 0)
    cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", l3.factor}, {"low_freq_factor", l3.low},
                           {"high_freq_factor", l3.high}, {"original_max_position_embeddings", l3.original_ctx}};
  write_text("config.json", cfg.dump(2) + "\n");
  write_text("generation_config.json", nlohmann::json{{"bos_token_id", bos}, {"eos_token_id", eos}}.dump(2) + "\n");
  if (s.vocab) {
    const vocabulary& v = *s.vocab;
    write_text("tokenizer.json", hf_json_of_vocabulary(v));
    nlohmann::json tc = {{"bos_token", v.pieces[std::size_t(v.bos_id)]}, {"eos_token", v.pieces[std::size_t(v.eos_id)]}};
    if (!v.chat_template.empty()) tc["chat_template"] = v.chat_template;
    write_text("tokenizer_config.json", tc.dump(2) + "\n");
  } else {
    write_text("tokenizer.model", text::serialize_model_proto(random_vocabulary(s.n_vocab), true));
  }

  // shards of about equal size, tensors in order
  uint64_t total = 0;
  for (const entry& e : all) total += uint64_t(e.spec.shape.size() == 1 ? e.spec.shape[0] : e.spec.shape[0] * e.spec.shape[1]);
  const uint64_t per = total / uint64_t(shards) + 1;
  nlohmann::json weight_map = nlohmann::json::object();
  std::size_t first = 0;
  uint64_t stream = uint64_t(s.seed) << 32;
  for (int sh = 0; sh < shards && first < all.size(); ++sh) {
    std::size_t last = first;
    uint64_t n = 0;
    while (last < all.size() && (n < per || sh == shards - 1)) {
      const auto& sp = all[last].spec.shape;
      n += uint64_t(sp.size() == 1 ? sp[0] : sp[0] * sp[1]);
      ++last;
    }
    char name[64];
    if (shards == 1) std::snprintf(name, sizeof name, "model.safetensors");
    else std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", sh + 1, shards);
    std::vector<safetensors::tensor_spec> specs;
    std::vector<uint64_t> ids;
    for (std::size_t i = first; i < last; ++i) {
      specs.push_back(all[i].spec);
      weight_map[all[i].spec.name] = name;
      ids.push_back(++stream);
    }
    safetensors::write(dir + "/" + name, specs, [&](std::size_t i, float* out) {
      const entry& e = all[first + i];
      const auto& sp = e.spec.shape;
      const int64_t rows = sp.size() == 1 ? 1 : sp[0], cols = sp.back();
      for (int64_t r = 0; r < rows; ++r) fill_row(out + r * cols, cols, ids[i], r, e.mean, e.sd);
    });
    first = last;
  }
  if (shards > 1)
    write_text("model.safetensors.index.json",
               nlohmann::json{{"metadata", {{"total_size", total * safetensors::dtype_bytes(dt)}}}, {"weight_map", weight_map}}.dump(2) + "\n");
}

}  // namespace qllm
