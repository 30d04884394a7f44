// pad_model: writes a Llama-2-7B-shaped GGUF that computes the same function as a small Llama
// GGUF (the shipped model), for measuring what depends on both a real model's behaviour and a 7B's
// cost per token (speculative decoding's acceptance and speed-up).
//
// The small model's weights are placed in the corner of the 7B's matrices and everything else is
// zero, so each token reads a 7B's bytes and the output is the small model's:
//  - the residual stream's first n_embd dimensions are the small model's; the rest stay 0;
//  - RMSNorm over the wider vector divides by a mean sqrt(n_embd' / n_embd) times smaller, so the
//    norm weights are scaled by sqrt(n_embd / n_embd') and eps by n_embd / n_embd';
//  - head h of the small model is head h of the 7B; its dimension pair p (RoPE frequency
//    base^(-2p / head_dim)) goes to pair p * head_dim' / head_dim, whose frequency is the same;
//    Q rows are scaled by sqrt(head_dim' / head_dim) to keep the attention scale; K and V heads
//    are copied to every query head of their group (the 7B has no grouping);
//  - the feed-forward's first n_ff rows are the small model's; the extra layers are all zero, so
//    they add nothing to the residual stream.
// The vocabulary (and the output matrix's row count) stay the small model's.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/formats.hpp"
#include "qllm/gguf.hpp"
#include "qllm/reference.hpp"

namespace {

using qllm::ggml_type;

struct dims {
  int64_t embd, ff, layers, heads, heads_kv, head_dim;
};

std::vector<float> read_f32(const qllm::gguf::file& f, const qllm::gguf::tensor_info& t) {
  const int64_t row = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
  std::vector<float> out(std::size_t(row * rows));
  const uint64_t row_bytes = t.bytes / uint64_t(rows);
  for (int64_t r = 0; r < rows; ++r)
    qllm::ref::dequantize_row(t.type, f.tensor_data(t) + uint64_t(r) * row_bytes, out.data() + r * row, row);
  return out;
}

void quantize_into(ggml_type type, const std::vector<float>& x, int64_t row, uint8_t* dst) {
  const int64_t rows = int64_t(x.size()) / row;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x.data() + r * row;
    if (type == ggml_type::q8_0) {
      auto* y = reinterpret_cast<qllm::block_q8_0*>(dst) + r * (row / qllm::qk);
      qllm::ref::quantize_row_q8_0(src, y, nullptr, row);
    } else if (type == ggml_type::q4_0) {
      auto* y = reinterpret_cast<qllm::block_q4_0*>(dst) + r * (row / qllm::qk);
      qllm::ref::quantize_row_q4_0(src, y, row);
    } else {
      std::memcpy(dst + uint64_t(r * row) * 4, src, std::size_t(row) * 4);
    }
  }
}

int usage() {
  std::fprintf(stderr,
               "usage: pad_model IN.gguf OUT.gguf [q8_0|q4_0]\n"
               "Writes a Llama-2-7B-shaped GGUF (dim 4096, 32 layers, 32 heads, ffn 11008) that computes\n"
               "IN's function: IN's weights padded with zeros (see the comment in bench/pad_model.cpp).\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) return usage();
  const std::string type_name = argc == 4 ? argv[3] : "q8_0";
  if (type_name != "q8_0" && type_name != "q4_0") return usage();
  const ggml_type wtype = type_name == "q8_0" ? ggml_type::q8_0 : ggml_type::q4_0;
  try {
    const auto in = qllm::gguf::file::open(argv[1]);
    if (in.get_string("general.architecture") != "llama") throw std::runtime_error("not a llama GGUF");
    const dims s{int64_t(in.get_uint("llama.embedding_length")), int64_t(in.get_uint("llama.feed_forward_length")),
                 int64_t(in.get_uint("llama.block_count")), int64_t(in.get_uint("llama.attention.head_count")),
                 int64_t(in.get_uint("llama.attention.head_count_kv", in.get_uint("llama.attention.head_count"))), 0};
    const dims b{4096, 11008, 32, 32, 32, 128};
    const int64_t hd = s.embd / s.heads;
    if (s.embd > b.embd || s.ff > b.ff || s.layers > b.layers || s.heads > b.heads || b.head_dim % hd != 0 ||
        s.heads % s.heads_kv != 0)
      throw std::runtime_error("IN does not fit in the 7B shape");
    const int64_t stretch = b.head_dim / hd;  // pair p -> pair p * stretch
    const auto head_row = [&](int64_t h, int64_t d) { return h * b.head_dim + (d / 2) * 2 * stretch + d % 2; };
    const float norm_scale = float(std::sqrt(double(s.embd) / double(b.embd)));
    const float q_scale = float(std::sqrt(double(b.head_dim) / double(hd)));
    const double eps = in.get_float("llama.attention.layer_norm_rms_epsilon") * double(s.embd) / double(b.embd);

    qllm::gguf::writer w;
    for (const auto& [k, v] : in.metadata()) w.set(k, v);
    w.set_string("general.name", in.get_string("general.name", "model") + " padded to 7B");
    w.set_u32("general.file_type", wtype == ggml_type::q8_0 ? 7 : 2);
    w.set_u32("llama.embedding_length", uint32_t(b.embd));
    w.set_u32("llama.feed_forward_length", uint32_t(b.ff));
    w.set_u32("llama.block_count", uint32_t(b.layers));
    w.set_u32("llama.attention.head_count", uint32_t(b.heads));
    w.set_u32("llama.attention.head_count_kv", uint32_t(b.heads_kv));
    w.set_u32("llama.rope.dimension_count", uint32_t(b.head_dim));
    w.set_f32("llama.attention.layer_norm_rms_epsilon", float(eps));

    // `make` fills the padded f32 tensor of shape ne ({row} for a vector, {row, rows} for a matrix)
    // from the source (or leaves zeros).
    const auto add = [&](const std::string& name, ggml_type type, std::vector<int64_t> ne, auto make) {
      const int64_t row_out = ne[0], rows_out = ne.size() > 1 ? ne[1] : 1;
      w.add_tensor_fn(name, type, ne, [=, &in](uint8_t* dst, std::size_t) {
        std::vector<float> out(std::size_t(row_out * rows_out), 0.0f);
        make(in, out);
        quantize_into(type, out, row_out, dst);
      });
    };
    const auto src = [&](const std::string& name) -> const qllm::gguf::tensor_info& {
      const auto* t = in.find_tensor(name);
      if (!t) throw std::runtime_error("IN has no tensor " + name);
      return *t;
    };
    const int64_t n_vocab = src("token_embd.weight").ne[1];
    // rows of a [row][rows] source copied into the corner, each element through map(r, c) -> (r', c')
    const auto corner = [&](std::string name, float scale, auto map_row, int64_t row_out) {
      const auto& t = src(name);
      return [=, &t](const qllm::gguf::file& f, std::vector<float>& out) {
        const auto x = read_f32(f, t);
        const int64_t row = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < row; ++c)
            for (int64_t r2 : map_row(r)) out[std::size_t(r2 * row_out + c)] = x[std::size_t(r * row + c)] * scale;
      };
    };
    const auto same = [](int64_t r) { return std::vector<int64_t>{r}; };
    add("token_embd.weight", wtype, {b.embd, n_vocab}, corner("token_embd.weight", 1.0f, same, b.embd));
    add("output_norm.weight", ggml_type::f32, {b.embd}, corner("output_norm.weight", norm_scale, same, b.embd));
    if (in.find_tensor("output.weight"))
      add("output.weight", wtype, {b.embd, n_vocab}, corner("output.weight", 1.0f, same, b.embd));
    const int64_t group = s.heads / s.heads_kv;
    for (int64_t l = 0; l < b.layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      const auto zero = [](const qllm::gguf::file&, std::vector<float>&) {};
      const auto ones = [](const qllm::gguf::file&, std::vector<float>& o) { std::fill(o.begin(), o.end(), 1.0f); };
      if (l >= s.layers) {
        add(p + "attn_norm.weight", ggml_type::f32, {b.embd}, ones);
        add(p + "ffn_norm.weight", ggml_type::f32, {b.embd}, ones);
        for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output"})
          add(p + m + ".weight", wtype, {b.embd, b.embd}, zero);
        add(p + "ffn_gate.weight", wtype, {b.embd, b.ff}, zero);
        add(p + "ffn_up.weight", wtype, {b.embd, b.ff}, zero);
        add(p + "ffn_down.weight", wtype, {b.ff, b.embd}, zero);
        continue;
      }
      add(p + "attn_norm.weight", ggml_type::f32, {b.embd}, corner(p + "attn_norm.weight", norm_scale, same, b.embd));
      add(p + "ffn_norm.weight", ggml_type::f32, {b.embd}, corner(p + "ffn_norm.weight", norm_scale, same, b.embd));
      const auto q_rows = [=](int64_t r) { return std::vector<int64_t>{head_row(r / hd, r % hd)}; };
      const auto kv_rows = [=](int64_t r) {  // kv head g -> every query head of its group
        std::vector<int64_t> o;
        for (int64_t h = (r / hd) * group; h < (r / hd + 1) * group; ++h) o.push_back(head_row(h, r % hd));
        return o;
      };
      add(p + "attn_q.weight", wtype, {b.embd, b.embd}, corner(p + "attn_q.weight", q_scale, q_rows, b.embd));
      add(p + "attn_k.weight", wtype, {b.embd, b.embd}, corner(p + "attn_k.weight", 1.0f, kv_rows, b.embd));
      add(p + "attn_v.weight", wtype, {b.embd, b.embd}, corner(p + "attn_v.weight", 1.0f, kv_rows, b.embd));
      {  // attn_output: its input columns are the heads' value dimensions
        const auto& t = src(p + "attn_output.weight");
        add(p + "attn_output.weight", wtype, {b.embd, b.embd}, [=, &t](const qllm::gguf::file& f, std::vector<float>& out) {
          const auto x = read_f32(f, t);
          for (int64_t r = 0; r < s.embd; ++r)
            for (int64_t c = 0; c < s.embd; ++c)
              out[std::size_t(r * b.embd + head_row(c / hd, c % hd))] = x[std::size_t(r * s.embd + c)];
        });
      }
      add(p + "ffn_gate.weight", wtype, {b.embd, b.ff}, corner(p + "ffn_gate.weight", 1.0f, same, b.embd));
      add(p + "ffn_up.weight", wtype, {b.embd, b.ff}, corner(p + "ffn_up.weight", 1.0f, same, b.embd));
      add(p + "ffn_down.weight", wtype, {b.ff, b.embd}, corner(p + "ffn_down.weight", 1.0f, same, b.ff));
    }
    w.write(argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pad_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
