// Seeded random Llama GGUF files. Values come from a counter-based hash, so every tensor is
// generated independently and streamed straight into the file (the 7B file never sits in memory).
#include "qllm/random_model.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/reference.hpp"

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
  throw error(errc::invalid_argument, "random model: unknown preset '" + std::string(name) + "' (tiny, small, 7b)");
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

std::size_t row_bytes(ggml_type t, int64_t k) {
  switch (t) {
    case ggml_type::q4_0: return std::size_t(k / qk) * sizeof(block_q4_0);
    case ggml_type::q8_0: return std::size_t(k / qk) * sizeof(block_q8_0);
    case ggml_type::f16:
    case ggml_type::bf16: return std::size_t(k) * 2;
    default: return std::size_t(k) * 4;
  }
}

void encode_row(ggml_type t, const float* x, int64_t k, uint8_t* dst) {
  switch (t) {
    case ggml_type::q4_0: ref::quantize_row_q4_0(x, reinterpret_cast<block_q4_0*>(dst), k); break;
    case ggml_type::q8_0:
      ref::quantize_row_q8_0(x, reinterpret_cast<block_q8_0*>(dst), nullptr, k);
      break;
    case ggml_type::f16:
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
    case ggml_type::bf16:
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
    default: std::memcpy(dst, x, std::size_t(k) * 4); break;
  }
}

}  // namespace

void write_random_model(const std::string& path, const random_model_spec& s) {
  const bool types_ok = s.type == ggml_type::q4_0 || s.type == ggml_type::q8_0 ||
                        s.type == ggml_type::f16 || s.type == ggml_type::bf16 || s.type == ggml_type::f32;
  const bool quant = s.type == ggml_type::q4_0 || s.type == ggml_type::q8_0;
  if (!types_ok || s.n_vocab < 259 || s.n_embd < 2 || s.n_layer < 1 || s.n_ff < 1 || s.n_head < 1 ||
      s.n_head_kv < 1 || s.n_embd % s.n_head || s.n_head % s.n_head_kv || (s.n_embd / s.n_head) % 2 ||
      (quant && (s.n_embd % qk || s.n_ff % qk)))
    throw error(errc::invalid_argument, "random model: inconsistent spec");
  const int64_t hd = s.n_embd / s.n_head, kv = hd * s.n_head_kv;

  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "qllm random " + std::to_string(s.n_embd) + "x" + std::to_string(s.n_layer));
  const uint32_t file_type = s.type == ggml_type::q4_0 ? 2 : s.type == ggml_type::q8_0 ? 7
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
  w.set_f32("llama.rope.freq_base", 10000.0f);

  // vocabulary: <unk>, <s>, </s>, 256 byte tokens, then synthetic pieces
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  tokens = {"<unk>", "<s>", "</s>"};
  types = {2, 3, 3};
  scores = {0.0f, 0.0f, 0.0f};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    tokens.emplace_back(buf);
    types.push_back(6);
    scores.push_back(0.0f);
  }
  for (int64_t id = 259; id < s.n_vocab; ++id) {
    // "▁" (U+2581, sentencepiece's space) alone first, so a space never falls back to bytes
    std::string piece = (id % 2) ? "\xe2\x96\x81" : "";
    for (int64_t v = id - 260; id > 259; v /= 26) {
      piece += char('a' + v % 26);
      if (v < 26) break;
    }
    tokens.push_back(piece);
    types.push_back(1);
    scores.push_back(-float(id - 259));
  }
  if (s.vocabulary) {
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_array_string("tokenizer.ggml.tokens", tokens);
    w.set_array_f32("tokenizer.ggml.scores", scores);
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
    const ggml_type t = s.type;
    w.add_tensor_fn(name, t, {k, n}, [=](uint8_t* dst, std::size_t bytes) {
      std::vector<float> row(static_cast<std::size_t>(k));
      const std::size_t rb = row_bytes(t, k);
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

}  // namespace qllm
