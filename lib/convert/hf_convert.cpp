// qllm convert: a Hugging Face Llama directory → GGUF, one tensor at a time.
#include "qllm/convert.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "convert/encode.hpp"
#include "text/bpe.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/safetensors.hpp"
#include "qllm/random_model.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm::convert {

using json = nlohmann::json;

namespace {

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// Names from the checkpoint go into messages: printable ASCII only, capped.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 200; ++i) out += (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  return out + (s.size() > 200 ? "...'" : "'");
}

// Checks that `path` is a regular file of at most `max_bytes` (a FIFO, a device or a directory
// would hang or mislead the readers) and returns its size.
uint64_t regular_file(const std::string& path, uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw error(errc::io, "cannot open '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw error(errc::io, "'" + path + "' is not a regular file");
  if (uint64_t(st.st_size) > max_bytes)
    throw error(errc::bad_format, "'" + path + "' is larger than " + std::to_string(max_bytes >> 20) + " MiB");
  return uint64_t(st.st_size);
}

json parse_json(const char* first, const char* last, const std::string& what) {
  try {  // nesting is bounded: deep arrays cost memory out of proportion to their bytes
    return json::parse(first, last, [&](int depth, json::parse_event_t, json&) {
      if (depth > 64) throw error(errc::bad_format, what + " nests deeper than 64 levels");
      return true;
    });
  } catch (const json::exception& e) {
    throw error(errc::bad_format, what + " is not valid JSON: " + e.what());
  }
}

json read_json(const std::string& path) {
  regular_file(path, uint64_t(64) << 20);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::io, "cannot open '" + path + "'");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.size() > (std::size_t(64) << 20)) throw error(errc::bad_format, "'" + path + "' is larger than 64 MiB");
  return parse_json(text.data(), text.data() + text.size(), "'" + path + "'");
}

[[noreturn]] void bad_config(const std::string& path, const std::string& what) {
  throw error(errc::bad_format, "'" + path + "': " + what);
}

int64_t get_int(const json& c, const std::string& path, const char* key, int64_t lo, int64_t hi,
                const int64_t* fallback = nullptr) {
  if (!c.contains(key) || c[key].is_null()) {
    if (fallback) return *fallback;
    bad_config(path, std::string("has no ") + key);
  }
  if (!c[key].is_number_integer()) bad_config(path, std::string(key) + " is not an integer");
  const int64_t v = c[key].get<int64_t>();
  if (v < lo || v > hi)
    bad_config(path, std::string(key) + " = " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
  return v;
}

double get_float(const json& c, const std::string& path, const char* key, double fallback) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_number()) bad_config(path, std::string(key) + " is not a number");
  const double v = c[key].get<double>();
  if (!std::isfinite(v) || v <= 0) bad_config(path, std::string(key) + " must be a positive number");
  return v;
}

hf_config read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const json c = read_json(path);
  if (!c.is_object()) bad_config(path, "is not a JSON object");
  hf_config h;
  bool llama = c.contains("model_type") && c["model_type"] == "llama";
  if (c.contains("architectures")) {
    if (!c["architectures"].is_array()) bad_config(path, "architectures is not an array");
    llama = false;
    std::string names;
    for (const json& a : c["architectures"]) {
      if (a.is_string() && a == "LlamaForCausalLM") llama = true;
      names += (names.empty() ? "" : ", ") + (a.is_string() ? a.get<std::string>() : a.dump());
    }
    if (!llama)
      throw error(errc::unsupported, "'" + path + "': architecture " + names + " is not supported (qllm converts LlamaForCausalLM)");
  }
  if (!llama) throw error(errc::unsupported, "'" + path + "': not a Llama checkpoint (no LlamaForCausalLM architecture)");
  // the limits model::load applies to the GGUF keys, so a converted file always loads
  h.n_embd = get_int(c, path, "hidden_size", 2, 1 << 16);
  h.n_layer = get_int(c, path, "num_hidden_layers", 1, 1 << 12);
  h.n_head = get_int(c, path, "num_attention_heads", 1, 1 << 12);
  h.n_head_kv = get_int(c, path, "num_key_value_heads", 1, 1 << 12, &h.n_head);
  h.n_ff = get_int(c, path, "intermediate_size", 1, 1 << 18);
  h.n_vocab = get_int(c, path, "vocab_size", 1, 1 << 24);
  const int64_t ctx_default = 4096;
  h.n_ctx = get_int(c, path, "max_position_embeddings", 1, 1 << 24, &ctx_default);
  h.rms_eps = get_float(c, path, "rms_norm_eps", 1e-6);
  if (!(float(h.rms_eps) > 0.0f && h.rms_eps < 1.0)) bad_config(path, "rms_norm_eps must be in (0, 1) as a 32-bit float");
  h.rope_theta = get_float(c, path, "rope_theta", 10000.0);
  if (!(h.rope_theta > 1.0) || !std::isfinite(float(h.rope_theta)))
    bad_config(path, "rope_theta must be > 1 and finite as a 32-bit float");
  if (c.contains("tie_word_embeddings")) {
    if (!c["tie_word_embeddings"].is_boolean()) bad_config(path, "tie_word_embeddings is not a boolean");
    h.tied_output = c["tie_word_embeddings"].get<bool>();
  }
  if (h.n_embd % h.n_head) bad_config(path, "hidden_size is not a multiple of num_attention_heads");
  if (h.n_head % h.n_head_kv) bad_config(path, "num_attention_heads is not a multiple of num_key_value_heads");
  if ((h.n_embd / h.n_head) % 2) bad_config(path, "the head size (hidden_size / num_attention_heads) is odd");
  if (c.contains("head_dim") && !c["head_dim"].is_null() &&
      get_int(c, path, "head_dim", 1, 65536) != h.n_embd / h.n_head)
    throw error(errc::unsupported, "'" + path + "': head_dim differs from hidden_size / num_attention_heads");
  if (c.contains("hidden_act") && c["hidden_act"] != "silu")
    throw error(errc::unsupported, "'" + path + "': hidden_act " + c["hidden_act"].dump() + " is not supported (silu)");
  for (const char* flag : {"attention_bias", "mlp_bias"})
    if (c.contains(flag) && c[flag] == true)
      throw error(errc::unsupported, "'" + path + "': " + flag + " = true is not supported (Llama has no biases)");
  if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) {
    const json& r = c["rope_scaling"];
    // transformers reads rope_type first (type is its older name); both must agree when present
    std::string type, old_type;
    if (r.is_object()) {
      if (r.contains("rope_type") && r["rope_type"].is_string()) type = r["rope_type"];
      if (r.contains("type") && r["type"].is_string()) old_type = r["type"];
    }
    if (!type.empty() && !old_type.empty() && type != old_type)
      bad_config(path, "rope_scaling says rope_type '" + type + "' and type '" + old_type + "'");
    if (type.empty()) type = old_type;
    const auto num = [&](const char* key, double lo, double hi) {
      if (!r.contains(key) || !r[key].is_number() || !(r[key].get<double>() >= lo) || !(r[key].get<double>() <= hi))
        bad_config(path, std::string("rope_scaling.") + key + " must be a number in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
      return r[key].get<double>();
    };
    if (type == "default") {
      // no scaling
    } else if (type == "llama3") {
      h.llama3_factor = num("factor", 1.0, 1024.0);
      h.llama3_low = num("low_freq_factor", 1.0 / 1024, 1024.0);
      h.llama3_high = num("high_freq_factor", 1.0 / 1024, 1024.0);
      h.llama3_original_ctx = num("original_max_position_embeddings", 1.0, double(1 << 24));
      if (!(h.llama3_high > h.llama3_low)) bad_config(path, "rope_scaling.high_freq_factor must exceed low_freq_factor");
    } else if (type != "linear") {
      throw error(errc::unsupported, "'" + path + "': rope_scaling " + r.dump() + " is not supported (linear, llama3)");
    } else {
      if (!r.contains("factor") || !r["factor"].is_number() || !(r["factor"].get<double>() >= 1.0) ||
          !(r["factor"].get<double>() <= 1024.0))
        bad_config(path, "rope_scaling.factor must be a number in [1, 1024]");
      h.rope_linear_factor = r["factor"].get<double>();
    }
  }
  std::string d = dir;
  if (char* real = ::realpath(dir.c_str(), nullptr)) {  // "." names the directory, not "."
    d = real;
    std::free(real);
  }
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const auto slash = d.find_last_of('/');
  h.name = slash == std::string::npos ? d : d.substr(slash + 1);
  return h;
}

// Shard files in the directory and which holds each tensor.
struct shard_set {
  std::map<std::string, std::unique_ptr<safetensors::file>> files;  // by file name
  std::map<std::string, std::string> where;                         // tensor name → file name
};

shard_set open_shards(const std::string& dir) {
  shard_set s;
  const std::string index = dir + "/model.safetensors.index.json";
  if (exists(index)) {
    const json j = read_json(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw error(errc::bad_format, "'" + index + "' has no weight_map object");
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) throw error(errc::bad_format, "'" + index + "': weight_map entry " + quote(it.key()) + " is not a file name");
      const std::string f = *it;
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == ".." ||
          f.find('\0') != std::string::npos)
        throw error(errc::bad_format, "'" + index + "': shard name " + quote(f) + " is not a file name in the directory");
      s.where[it.key()] = f;
      if (!s.files.count(f)) s.files[f] = std::make_unique<safetensors::file>(safetensors::file::open(dir + "/" + f));
    }
    for (const auto& [name, f] : s.where)
      if (!s.files[f]->find(name))
        throw error(errc::bad_format, "tensor " + quote(name) + " is listed in the index under " + quote(f) + " but that shard lacks it");
    for (const auto& [f, file] : s.files)
      for (const auto& t : file->tensors())
        if (!s.where.count(t.name) || s.where[t.name] != f)
          throw error(errc::bad_format, "shard " + quote(f) + " holds tensor " + quote(t.name) + " that the index does not list there");
  } else if (exists(dir + "/model.safetensors")) {
    auto f = std::make_unique<safetensors::file>(safetensors::file::open(dir + "/model.safetensors"));
    for (const auto& t : f->tensors()) s.where[t.name] = "model.safetensors";
    s.files["model.safetensors"] = std::move(f);
  } else {
    if (exists(dir + "/pytorch_model.bin") || exists(dir + "/pytorch_model.bin.index.json"))
      throw error(errc::unsupported, "'" + dir + "' holds pytorch_model.bin (pickle) weights; qllm reads safetensors only");
    throw error(errc::io, "'" + dir + "' has no model.safetensors or model.safetensors.index.json");
  }
  return s;
}

uint32_t gguf_file_type(ggml_type t) {
  switch (t) {
    case ggml_type::f32: return 0;
    case ggml_type::f16: return 1;
    case ggml_type::q4_0: return 2;
    case ggml_type::q8_0: return 7;
    case ggml_type::bf16: return 32;
    default: return 0;
  }
}

std::string shape_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

struct prepared {
  plan p;
  shard_set shards;
  std::shared_ptr<const tokenizer> tok;
};

prepared prepare(const std::string& dir, const options& opt) {
  const ggml_type ot = opt.type;
  if (!(ot == ggml_type::f32 || ot == ggml_type::f16 || ot == ggml_type::bf16 || ot == ggml_type::q8_0 ||
        ot == ggml_type::q4_0))
    throw error(errc::unsupported, std::string("convert: output type ") + gguf::type_name(ot) +
                                       " is not supported (f32, f16, bf16, q8_0, q4_0)");
  prepared r;
  plan& p = r.p;
  p.config = read_config(dir);
  const hf_config& c = p.config;
  r.shards = open_shards(dir);
  const std::string tok_path = dir + "/tokenizer.model", json_path = dir + "/tokenizer.json";
  if (exists(tok_path)) {  // Llama-2, Code Llama: sentencepiece
    regular_file(tok_path, uint64_t(64) << 20);
    r.tok = tokenizer::from_file(tok_path);
  } else if (exists(json_path)) {  // Llama-3: byte-level BPE
    regular_file(json_path, uint64_t(256) << 20);
    vocabulary v = vocabulary_from_hf_json(json_path);
    // tokenizer_config.json names the BOS and EOS an instruct model uses (EOS <|eot_id|>), and
    // holds the chat template
    const std::string cfg_path = dir + "/tokenizer_config.json";
    if (exists(cfg_path)) {
      regular_file(cfg_path, uint64_t(64) << 20);
      const json tc = read_json(cfg_path);
      const auto named = [&](const char* key) -> int32_t {
        if (!tc.is_object() || !tc.contains(key) || tc[key].is_null()) return -1;
        const json& t = tc[key];
        const std::string piece = t.is_string() ? t.get<std::string>()
                                  : t.is_object() && t.contains("content") && t["content"].is_string() ? t["content"].get<std::string>()
                                                                                                          : std::string();
        if (const int32_t id = text::find_piece(v.pieces, piece); id >= 0) return id;
        throw error(errc::bad_format, "'" + cfg_path + "': " + key + " " + t.dump() + " is not a token of tokenizer.json");
      };
      if (const int32_t b = named("bos_token"); b >= 0) v.bos_id = b;
      if (const int32_t e = named("eos_token"); e >= 0) v.eos_id = e;
      if (v.eot_id == v.eos_id) v.eot_id = -1;
      if (tc.is_object() && tc.contains("chat_template") && tc["chat_template"].is_string())
        v.chat_template = tc["chat_template"].get<std::string>();
    }
    r.tok = tokenizer::from_vocabulary(std::move(v));
  } else {
    throw error(errc::io, "'" + dir + "' has neither tokenizer.model (Llama-2's sentencepiece vocabulary) nor tokenizer.json");
  }
  p.vocab_pieces = r.tok->n_vocab();
  if (p.vocab_pieces != c.n_vocab)
    throw error(errc::unsupported, "the tokenizer has " + std::to_string(p.vocab_pieces) + " pieces but config.json vocab_size is " +
                                       std::to_string(c.n_vocab));

  const int64_t hd = c.n_embd / c.n_head, kv = hd * c.n_head_kv;
  std::set<std::string> used;
  auto add = [&](const std::string& hf, const std::string& gg, std::vector<int64_t> hf_shape, bool matrix, bool permute) {
    auto w = r.shards.where.find(hf);
    if (w == r.shards.where.end()) throw error(errc::bad_format, "tensor '" + hf + "' is missing from the checkpoint");
    const safetensors::tensor* t = r.shards.files[w->second]->find(hf);
    if (t->shape != hf_shape)
      throw error(errc::bad_format, "tensor '" + hf + "' has shape " + shape_text(t->shape) + " but config.json implies " +
                                        shape_text(hf_shape));
    tensor_plan tp;
    tp.hf_name = hf;
    tp.gguf_name = gg;
    tp.shard = w->second;
    tp.ne.assign(hf_shape.rbegin(), hf_shape.rend());
    tp.src_dtype = safetensors::dtype_name(t->type);
    tp.type = matrix ? ot : ggml_type::f32;
    if (matrix && gguf::type_block_elems(tp.type) > 1 && tp.ne[0] % gguf::type_block_elems(tp.type))
      throw error(errc::unsupported, "tensor '" + hf + "' has rows of " + std::to_string(tp.ne[0]) + " values, not a multiple of " +
                                         std::to_string(gguf::type_block_elems(tp.type)) + " for " + gguf::type_name(tp.type));
    tp.src_bytes = t->end - t->begin;
    tp.out_bytes = gguf::tensor_bytes(tp.type, tp.ne);
    tp.permute_qk = permute && opt.permute_qk;
    p.src_bytes += tp.src_bytes;
    p.out_bytes += tp.out_bytes;
    p.tensors.push_back(std::move(tp));
    used.insert(hf);
  };
  add("model.embed_tokens.weight", "token_embd.weight", {c.n_vocab, c.n_embd}, true, false);
  add("model.norm.weight", "output_norm.weight", {c.n_embd}, false, false);
  if (!c.tied_output) add("lm_head.weight", "output.weight", {c.n_vocab, c.n_embd}, true, false);
  else if (r.shards.where.count("lm_head.weight")) used.insert("lm_head.weight");  // a copy of the embeddings
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string h = "model.layers." + std::to_string(l) + ".", g = "blk." + std::to_string(l) + ".";
    add(h + "input_layernorm.weight", g + "attn_norm.weight", {c.n_embd}, false, false);
    add(h + "self_attn.q_proj.weight", g + "attn_q.weight", {c.n_embd, c.n_embd}, true, true);
    add(h + "self_attn.k_proj.weight", g + "attn_k.weight", {kv, c.n_embd}, true, true);
    add(h + "self_attn.v_proj.weight", g + "attn_v.weight", {kv, c.n_embd}, true, false);
    add(h + "self_attn.o_proj.weight", g + "attn_output.weight", {c.n_embd, c.n_embd}, true, false);
    add(h + "post_attention_layernorm.weight", g + "ffn_norm.weight", {c.n_embd}, false, false);
    add(h + "mlp.gate_proj.weight", g + "ffn_gate.weight", {c.n_ff, c.n_embd}, true, false);
    add(h + "mlp.up_proj.weight", g + "ffn_up.weight", {c.n_ff, c.n_embd}, true, false);
    add(h + "mlp.down_proj.weight", g + "ffn_down.weight", {c.n_embd, c.n_ff}, true, false);
  }
  for (const auto& [name, f] : r.shards.where) {
    if (used.count(name)) continue;
    // a cached RoPE table of a layer, which rope_theta determines
    const std::string pre = "model.layers.", post = ".self_attn.rotary_emb.inv_freq";
    if (name.size() > pre.size() + post.size() && name.compare(0, pre.size(), pre) == 0 &&
        name.compare(name.size() - post.size(), post.size(), post) == 0) {
      const std::string num = name.substr(pre.size(), name.size() - pre.size() - post.size());
      if (num.size() <= 4 && num.find_first_not_of("0123456789") == std::string::npos && std::stoi(num) < c.n_layer)
        continue;
    }
    throw error(errc::unsupported, "tensor " + quote(name) + " in " + quote(f) + " is not part of a Llama model qllm knows");
  }
  return r;
}

}  // namespace

void permute_rows_for_rope(const float* src, float* dst, int64_t n_rows, int64_t row_len, int64_t n_heads) {
  const int64_t hd = n_rows / n_heads, half = hd / 2;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const float* s = src + (h * hd + j * half + i) * row_len;
        std::copy(s, s + row_len, dst + (h * hd + 2 * i + j) * row_len);
      }
}

plan make_plan(const std::string& hf_dir, const options& opt) { return prepare(hf_dir, opt).p; }

plan convert(const std::string& hf_dir, const std::string& out_path, const options& opt) {
  prepared r = prepare(hf_dir, opt);
  // the output must not be a directory or one of the inputs (renaming over a shard would destroy it)
  struct stat out_st {};
  if (::stat(out_path.c_str(), &out_st) == 0) {
    if (S_ISDIR(out_st.st_mode)) throw error(errc::invalid_argument, "convert: output '" + out_path + "' is a directory");
    std::vector<std::string> inputs = {hf_dir + "/config.json", hf_dir + "/tokenizer.model", hf_dir + "/tokenizer.json",
                                       hf_dir + "/tokenizer_config.json", hf_dir + "/model.safetensors.index.json"};
    for (const auto& [name, f] : r.shards.files) inputs.push_back(hf_dir + "/" + name);
    for (const std::string& in : inputs) {
      struct stat st {};
      if (::stat(in.c_str(), &st) == 0 && st.st_dev == out_st.st_dev && st.st_ino == out_st.st_ino)
        throw error(errc::invalid_argument, "convert: output '" + out_path + "' is an input of the conversion ('" + in + "')");
    }
  }
  const plan& p = r.p;
  const hf_config& c = p.config;
  gguf::writer w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", c.name);
  w.set_u32("general.file_type", gguf_file_type(opt.type));
  w.set_u32("llama.context_length", uint32_t(c.n_ctx));
  w.set_u32("llama.embedding_length", uint32_t(c.n_embd));
  w.set_u32("llama.block_count", uint32_t(c.n_layer));
  w.set_u32("llama.feed_forward_length", uint32_t(c.n_ff));
  w.set_u32("llama.rope.dimension_count", uint32_t(c.n_embd / c.n_head));
  w.set_u32("llama.attention.head_count", uint32_t(c.n_head));
  w.set_u32("llama.attention.head_count_kv", uint32_t(c.n_head_kv));
  w.set_f32("llama.attention.layer_norm_rms_epsilon", float(c.rms_eps));
  w.set_f32("llama.rope.freq_base", float(c.rope_theta));
  if (c.rope_linear_factor > 0) {
    w.set_string("llama.rope.scaling.type", "linear");
    w.set_f32("llama.rope.scaling.factor", float(c.rope_linear_factor));
  }
  w.set_u32("llama.vocab_size", uint32_t(c.n_vocab));
  const vocabulary& v = r.tok->vocab();
  std::vector<int32_t> types;
  for (token_type t : v.types) types.push_back(int32_t(t));
  if (v.kind == tokenizer_kind::llama3_bpe) {  // as llama.cpp's converter writes Llama-3
    text::write_bpe_vocabulary(w, v);
  } else {
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_array_string("tokenizer.ggml.tokens", v.pieces);
    w.set_array_f32("tokenizer.ggml.scores", v.scores);
    w.set_array_i32("tokenizer.ggml.token_type", types);
    w.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(v.unk_id));
    w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos_id));
    w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos_id));
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  }
  if (!v.chat_template.empty()) w.set_string("tokenizer.chat_template", v.chat_template);
  if (c.llama3_factor > 0) {  // Llama-3.1's frequency factors, as llama.cpp's converter stores them
    const std::vector<float> f = llama3_rope_factors(c.n_embd / c.n_head, c.rope_theta, c.llama3_factor, c.llama3_low,
                                                     c.llama3_high, c.llama3_original_ctx);
    w.add_tensor_fn("rope_freqs.weight", ggml_type::f32, {int64_t(f.size())},
                    [f](uint8_t* dst, std::size_t) { std::memcpy(dst, f.data(), f.size() * 4); });
  }

  struct state {
    progress pr;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  };
  auto st = std::make_shared<state>();
  st->pr.total = p.tensors.size();
  st->pr.bytes_total = p.src_bytes;
  for (const tensor_plan& tp : p.tensors) {
    const safetensors::file* f = r.shards.files.at(tp.shard).get();
    const int64_t n_heads = tp.gguf_name.find("attn_k") != std::string::npos ? c.n_head_kv : c.n_head;
    w.add_tensor_fn(tp.gguf_name, tp.type, tp.ne, [f, &tp, &opt, st, n_heads](uint8_t* dst, std::size_t bytes) {
      const safetensors::tensor* t = f->find(tp.hf_name);
      const int64_t k = tp.ne[0], rows = tp.ne.size() > 1 ? tp.ne[1] : 1;
      std::vector<float> vals(std::size_t(k * rows));
      safetensors::to_f32(*f, *t, vals.data());
      f->release(f->data(*t), std::size_t(t->end - t->begin));
      int64_t bad = 0;
      for (float x : vals) bad += !std::isfinite(x);
      if (bad) {
        const std::string msg = "tensor '" + tp.hf_name + "' has " + std::to_string(bad) + " NaN/Inf values";
        if (opt.strict) throw error(errc::bad_format, msg + " (--strict)");
        if (opt.on_warning)
          opt.on_warning(msg + "; kept as they are (a quantized block holding one gets a NaN scale, which qllm refuses to load)");
      }
      if (tp.permute_qk) {
        std::vector<float> perm(vals.size());
        permute_rows_for_rope(vals.data(), perm.data(), rows, k, n_heads);
        vals.swap(perm);
      }
      const std::size_t rb = encoded_row_bytes(tp.type, k);
      if (rb * std::size_t(rows) != bytes) throw error(errc::internal, "convert: size mismatch for " + tp.gguf_name);
      // rows are independent: the threads split them (the bytes do not depend on the split)
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) encode_row(tp.type, vals.data() + r * k, k, dst + std::size_t(r) * rb);
      st->pr.done++;
      st->pr.bytes_done += tp.src_bytes;
      st->pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - st->t0).count();
      if (opt.on_progress) opt.on_progress(st->pr);
    });
  }
  w.write(out_path);
  return r.p;
}

}  // namespace qllm::convert
