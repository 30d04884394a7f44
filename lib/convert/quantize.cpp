// qllm quantize: GGUF → GGUF with another weight type or a k-quant mix (quantize.hpp).
#include "qllm/quantize.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "convert/encode.hpp"
#include "omp_compat.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/reference.hpp"
#include "qllm/resources.hpp"

namespace qllm::quant {

namespace {

struct scheme_row {
  scheme s;
  const char* name;
  uint32_t ftype;
  ggml_type base;
};
constexpr scheme_row kSchemes[] = {
    {scheme::f32, "f32", 0, ggml_type::f32},       {scheme::f16, "f16", 1, ggml_type::f16},
    {scheme::bf16, "bf16", 32, ggml_type::bf16},   {scheme::q8_0, "q8_0", 7, ggml_type::q8_0},
    {scheme::q4_0, "q4_0", 2, ggml_type::q4_0},    {scheme::q4_k, "q4_k_s", 14, ggml_type::q4_k},
    {scheme::q5_k, "q5_k_s", 16, ggml_type::q5_k}, {scheme::q6_k, "q6_k", 18, ggml_type::q6_k},
    {scheme::q4_k_m, "q4_k_m", 15, ggml_type::q4_k}, {scheme::q5_k_m, "q5_k_m", 17, ggml_type::q5_k},
};

const scheme_row& row_of(scheme s) {
  for (const auto& r : kSchemes)
    if (r.s == s) return r;
  return kSchemes[0];
}

bool is_quantized(ggml_type t) {
  return t != ggml_type::f32 && t != ggml_type::f16 && t != ggml_type::bf16;
}

bool k_type(ggml_type t) { return t == ggml_type::q4_k || t == ggml_type::q5_k || t == ggml_type::q6_k; }

bool readable(ggml_type t) {
  switch (t) {
    case ggml_type::f32: case ggml_type::f16: case ggml_type::bf16: case ggml_type::q4_0:
    case ggml_type::q8_0: case ggml_type::q4_1: case ggml_type::q5_0: case ggml_type::q5_1:
    case ggml_type::q2_k: case ggml_type::q3_k: case ggml_type::q4_k: case ggml_type::q5_k:
    case ggml_type::q6_k: return true;
    default: return false;
  }
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// N of "blk.N.*", or -1.
int64_t layer_of(std::string_view name) {
  if (name.substr(0, 4) != "blk.") return -1;
  int64_t v = 0;
  std::size_t i = 4;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) && i < 12; ++i) v = v * 10 + (name[i] - '0');
  return i > 4 && i < name.size() && name[i] == '.' ? v : -1;
}

}  // namespace

scheme parse_scheme(std::string_view name) {
  std::string n(name);
  for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (n == "q4_k") n = "q4_k_s";
  if (n == "q5_k") n = "q5_k_s";
  std::string names;
  for (const auto& r : kSchemes) {
    if (n == r.name) return r.s;
    names += std::string(names.empty() ? "" : ", ") + r.name;
  }
  throw error(errc::invalid_argument, "quantize type '" + std::string(name) + "' is not one of " + names);
}

const char* scheme_name(scheme s) noexcept { return row_of(s).name; }
uint32_t file_type(scheme s) noexcept { return row_of(s).ftype; }

std::string file_type_name(uint32_t ftype) {
  for (const auto& r : kSchemes)
    if (r.ftype == ftype) {
      std::string n = r.name;
      for (char& c : n) c = char(std::toupper(static_cast<unsigned char>(c)));
      return n;
    }
  return "";
}

bool use_more_bits(int64_t i, int64_t n) noexcept {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

ggml_type tensor_type(scheme s, std::string_view name, int64_t ne0, int64_t n_dims, int64_t layer,
                      const model_shape& m) noexcept {
  if (n_dims < 2) return ggml_type::f32;
  const ggml_type base = row_of(s).base;
  ggml_type t = base;
  if (is_quantized(base)) {
    const bool mix = s == scheme::q4_k_m || s == scheme::q5_k_m;
    const bool output = name == "output.weight" || (m.tied_output && name == "token_embd.weight");
    if (output) {
      if (base != ggml_type::q8_0) t = ggml_type::q6_k;
    } else if (layer >= 0 && ends_with(name, ".attn_v.weight")) {
      if (mix && use_more_bits(layer, m.n_layer)) t = ggml_type::q6_k;
      if (s == scheme::q4_k && layer < 4) t = ggml_type::q5_k;
      // Llama-2-70B (80 layers with grouped-query attention): its attn_v is 8x smaller than
      // attn_q, more bits cost little
      if (m.n_layer == 80 && m.gqa && t == ggml_type::q4_k) t = ggml_type::q5_k;
    } else if (layer >= 0 && ends_with(name, ".ffn_down.weight")) {
      if (mix && use_more_bits(layer, m.n_layer)) t = ggml_type::q6_k;
      if (s == scheme::q4_k && layer < m.n_layer / 8) t = ggml_type::q5_k;
    }
  }
  if (k_type(t) && ne0 % qk_k != 0) t = ggml_type::q8_0;
  if ((t == ggml_type::q8_0 || t == ggml_type::q4_0) && ne0 % qk != 0) t = ggml_type::f16;
  return t;
}

report quantize_file(const std::string& in, const std::string& out, const options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  struct stat si{}, so{};
  if (::stat(out.c_str(), &so) == 0) {
    if (S_ISDIR(so.st_mode)) throw error(errc::invalid_argument, "output '" + out + "' is a directory");
    if (::stat(in.c_str(), &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
      throw error(errc::invalid_argument, "output '" + out + "' is the input file");
  }
  auto src = std::make_shared<gguf::file>(gguf::file::open(in));
  const std::string arch = src->get_string("general.architecture", "");
  if (arch != "llama")
    throw error(errc::unsupported, "'" + in + "' has general.architecture '" + arch +
                                       "'; qllm quantizes Llama models only");
  model_shape shape;
  shape.n_layer = int64_t(src->get_uint("llama.block_count"));
  shape.gqa = src->get_uint("llama.attention.head_count_kv", src->get_uint("llama.attention.head_count", 0)) <
              src->get_uint("llama.attention.head_count", 0);
  shape.tied_output = src->find_tensor("output.weight") == nullptr;

  gguf::writer w;
  for (const auto& [key, v] : src->metadata()) {
    if (key == "general.alignment")
      w.set_alignment(uint32_t(src->alignment()));
    else
      w.set(key, v);
  }
  w.set_u32("general.file_type", file_type(opt.type));
  w.set_u32("general.quantization_version", 2);

  struct state {
    progress pr;
    std::chrono::steady_clock::time_point t0;
  };
  auto st = std::make_shared<state>();
  st->t0 = t0;
  st->pr.total = src->tensors().size();
  for (const auto& t : src->tensors()) st->pr.bytes_total += t.bytes;

  report rep;
  const int nt = opt.n_threads > 0 ? opt.n_threads : default_threads();
  for (const auto& t : src->tensors()) {
    const int64_t layer = layer_of(t.name);
    ggml_type to = tensor_type(opt.type, t.name, t.ne[0], int64_t(t.ne.size()), layer, shape);
    if (t.ne.size() < 2 || t.bytes == 0) to = t.type;  // norms, other vectors, empty tensors as they are
    if (to != t.type) {
      if (!readable(t.type))
        throw error(errc::unsupported, "tensor '" + t.name + "' has type " +
                                           gguf::type_name(t.type) + ", which qllm cannot read");
      if (is_quantized(t.type) && is_quantized(to) && !opt.allow_requantize)
        throw error(errc::unsupported, "tensor '" + t.name + "' is already " +
                                           gguf::type_name(t.type) +
                                           "; quantizing it again adds error (--allow-requantize)");
    }
    rep.types[gguf::type_name(to)]++;
    rep.tensors++;
    rep.bytes_in += t.bytes;
    const std::string name = t.name;
    const ggml_type from = t.type;
    const std::vector<int64_t> ne = t.ne;
    const uint64_t in_bytes = t.bytes;
    w.add_tensor_fn(name, to, ne, [src, name, from, to, ne, in_bytes, st, nt, &opt](uint8_t* dst, std::size_t bytes) {
      const gguf::tensor_info* ti = src->find_tensor(name);
      const uint8_t* p = src->tensor_data(*ti);
      if (from == to) {
        std::copy(p, p + bytes, dst);
      } else {
        const int64_t k = ne[0];
        int64_t rows = 1;
        for (std::size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
        const std::size_t rb_in = std::size_t(in_bytes) / std::size_t(rows), rb_out = encoded_row_bytes(to, k);
        if (rb_out * std::size_t(rows) != bytes) throw error(errc::internal, "quantize: size mismatch for " + name);
        // rows are independent: the bytes do not depend on the thread split. Each encoded row is
        // read back: a value too large for the type's fp16 scales must not become a file that
        // loads as infinities or NaN (or that qllm refuses to load).
        int64_t bad_in = 0, bad_out = 0;
        float largest = 0.0f;
#pragma omp parallel num_threads(nt) reduction(+ : bad_in, bad_out) reduction(max : largest)
        {
          std::vector<float> row(static_cast<std::size_t>(k)), back(static_cast<std::size_t>(k));
#pragma omp for schedule(static)
          for (int64_t r = 0; r < rows; ++r) {
            ref::dequantize_row(from, p + std::size_t(r) * rb_in, row.data(), k);
            int64_t nonfinite = 0;
            for (float v : row) {
              nonfinite += !std::isfinite(v);
              if (std::isfinite(v)) largest = std::max(largest, std::fabs(v));
            }
            bad_in += nonfinite;
            if (nonfinite) continue;
            uint8_t* o = dst + std::size_t(r) * rb_out;
            encode_row(to, row.data(), k, o);
            ref::dequantize_row(to, o, back.data(), k);
            for (float v : back) bad_out += !std::isfinite(v);
          }
        }
        if (bad_in)
          throw error(errc::bad_format, "tensor '" + name + "' holds " + std::to_string(bad_in) +
                                            " NaN or infinite values");
        if (bad_out) {
          char big[32];
          std::snprintf(big, sizeof big, "%g", double(largest));
          throw error(errc::unsupported, "tensor '" + name + "' has values up to " + big + ", too large for " +
                                             gguf::type_name(to) + " (its fp16 scales overflow)");
        }
      }
      src->release(p, std::size_t(in_bytes));
      st->pr.done++;
      st->pr.bytes_done += in_bytes;
      st->pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - st->t0).count();
      if (opt.on_progress) opt.on_progress(st->pr);
    });
    rep.bytes_out += gguf::tensor_bytes(to, ne);
  }
  w.write(out);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace qllm::quant
