// GGUF block formats without kernels of their own (Q4_1, Q5_0, Q5_1, Q2_K..Q6_K): known answers
// from hand-built blocks (values worked out by hand from the layouts in docs/formats.md), and
// models of mixed types loading by conversion to Q8_0 with logits bit-identical to a Q8_0 file
// made from the same values.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qllm/formats.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/random_model.hpp"
#include "qllm/reference.hpp"

using namespace qllm;

namespace {

void put_half(std::vector<uint8_t>& b, std::size_t at, float v) {
  const uint16_t h = fp32_to_fp16(v);
  std::memcpy(b.data() + at, &h, 2);
}

std::vector<float> dequant(ggml_type t, const std::vector<uint8_t>& b, int64_t k) {
  std::vector<float> y(static_cast<std::size_t>(k));
  ref::dequantize_row(t, b.data(), y.data(), k);
  return y;
}

}  // namespace

TEST_CASE("dequantize: Q4_1, Q5_0, Q5_1 known answers") {
  {  // Q4_1: d, m, 16 nibble bytes (element j: low nibble of byte j, element j+16: high nibble)
    std::vector<uint8_t> b(20, 0);
    put_half(b, 0, 0.5f);
    put_half(b, 2, -1.0f);
    b[4 + 3] = 0x7A;
    const auto y = dequant(ggml_type::q4_1, b, 32);
    CHECK(y[3] == 4.0f);    // 10 * 0.5 - 1
    CHECK(y[19] == 2.5f);   // 7 * 0.5 - 1
    CHECK(y[0] == -1.0f);   // 0 * 0.5 - 1
  }
  {  // Q5_0: d, qh (bit j: 5th bit of element j), nibbles; (q - 16) * d
    std::vector<uint8_t> b(22, 0);
    put_half(b, 0, 0.25f);
    const uint32_t qh = (1u << 3) | (1u << 20);
    std::memcpy(b.data() + 2, &qh, 4);
    b[6 + 3] = 0x21;
    b[6 + 4] = 0x50;
    const auto y = dequant(ggml_type::q5_0, b, 32);
    CHECK(y[3] == 0.25f);   // (1 | 16) - 16 = 1
    CHECK(y[19] == -3.5f);  // 2 - 16
    CHECK(y[20] == 1.25f);  // (5 | 16) - 16
    CHECK(y[4] == -4.0f);   // 0 - 16
  }
  {  // Q5_1: d, m, qh, nibbles; q * d + m
    std::vector<uint8_t> b(24, 0);
    put_half(b, 0, 2.0f);
    put_half(b, 2, 0.5f);
    const uint32_t qh = 1u << 31;
    std::memcpy(b.data() + 4, &qh, 4);
    b[8 + 15] = 0xF0;
    const auto y = dequant(ggml_type::q5_1, b, 32);
    CHECK(y[31] == 62.5f);  // (15 | 16) * 2 + 0.5
    CHECK(y[15] == 0.5f);
  }
}

TEST_CASE("dequantize: Q2_K and Q3_K known answers") {
  {  // Q2_K: scales[16] (scale | min << 4), qs[64], d, dmin; 2-bit quants, 4 per byte by shift
    std::vector<uint8_t> b(84, 0);
    put_half(b, 80, 1.0f);
    put_half(b, 82, 0.5f);
    b[0] = 0x32;       // sub-block 0: scale 2, min 3
    b[2] = 0x01;       // sub-block 2 (shift 2, first half): scale 1, min 0
    b[6] = 0x14;       // sub-block 6 (shift 6, first half): scale 4, min 1
    b[8] = 0x21;       // sub-block 8 (second 128, shift 0): scale 1, min 2
    b[16 + 0] = 0xE4;  // q[0] = 11 10 01 00
    b[16 + 32] = 0x02;
    const auto y = dequant(ggml_type::q2_k, b, 256);
    CHECK(y[0] == -1.5f);    // 2 * 0 - 0.5 * 3
    CHECK(y[32] == 1.0f);    // 1 * ((0xE4 >> 2) & 3 = 1) - 0
    CHECK(y[96] == 11.5f);   // 4 * 3 - 0.5
    CHECK(y[128] == 1.0f);   // 1 * 2 - 0.5 * 2
  }
  {  // Q3_K: hmask[32], qs[64], scales[12] (16 six-bit values, minus 32), d
    std::vector<uint8_t> b(110, 0);
    put_half(b, 108, 1.0f);
    uint8_t* s = b.data() + 96;
    s[0] = 0x05;  // scale 0 low nibble 5
    s[8] = 0x02;  // scale 0 high bits 2 → (5 | 32) - 32 = 5
    s[1] = 0x30;  // scale 1 low nibble 0, scale 9 low nibble 3
    s[9] = 0x20;  // scale 1 high bits 0 → -32; scale 9 high bits 2 → (3 | 32) - 32 = 3
    uint8_t* hm = b.data();
    uint8_t* q = b.data() + 32;
    q[0] = 0x01;   // element 0: 1, high bit clear → 1 - 4
    hm[16] = 0x10;  // element 16 (bit 0 clear): 0 - 4; element 144 (bit 4 set): no offset
    q[48] = 0x03;  // element 144: second 128, shift 0, second half → q[32 + 16] = 3
    const auto y = dequant(ggml_type::q3_k, b, 256);
    CHECK(y[0] == -15.0f);   // 5 * (1 - 4)
    CHECK(y[16] == 128.0f);  // -32 * (0 - 4)
    CHECK(y[144] == 9.0f);   // 3 * 3
  }
}

TEST_CASE("dequantize: Q4_K, Q5_K and Q6_K known answers") {
  // Q4_K: d, dmin, scales[12], qs[128]; sub-blocks of 32 with 6-bit scales and mins
  std::vector<uint8_t> b(144, 0);
  put_half(b, 0, 1.0f);
  put_half(b, 2, 0.5f);
  uint8_t* s = b.data() + 4;
  s[0] = 2;     // sub-block 0 scale
  s[4] = 3;     // sub-block 0 min
  s[1] = 0x44;  // sub-block 1 scale 4 (low 6 bits); top bits 01 → sub-block 5's scale bits 4-5
  s[5] = 0x80;  // sub-block 1 min 0; top bits 10 → sub-block 5's min bits 4-5
  s[9] = 0x23;  // sub-block 5: scale low nibble 3, min low nibble 2 → scale 19, min 34
  uint8_t* q = b.data() + 16;
  q[0] = 0x15;   // element 0: 5 (sub-block 0), element 32: 1 (sub-block 1)
  q[64] = 0x90;  // element 160: high nibble of q[64] → sub-block 5, value 9
  const auto y = dequant(ggml_type::q4_k, b, 256);
  CHECK(y[0] == 8.5f);     // 1 * 2 * 5 - 0.5 * 3
  CHECK(y[32] == 4.0f);    // 4 * 1 - 0
  CHECK(y[160] == 154.0f);  // 19 * 9 - 0.5 * 34

  // Q5_K: the same with qh[32] before qs: bit i of qh[l] is the 5th bit in sub-block i
  std::vector<uint8_t> b5(176, 0);
  std::memcpy(b5.data(), b.data(), 16);
  std::memcpy(b5.data() + 48, b.data() + 16, 128);
  b5[16 + 0] = 1 << 5;  // element 160 (sub-block 5, l = 0) gets +16; element 0 (bit 0) does not
  const auto y5 = dequant(ggml_type::q5_k, b5, 256);
  CHECK(y5[0] == 8.5f);
  CHECK(y5[160] == 458.0f);  // 19 * (9 + 16) - 17

  // Q6_K: ql[128], qh[64], scales[16] int8, d; q = (4 low bits | 2 high bits << 4) - 32
  std::vector<uint8_t> b6(210, 0);
  put_half(b6, 208, 0.5f);
  b6[0] = 0x2F;              // ql[0]: element 0 low nibble F, element 64 nibble 2
  b6[32] = 0x51;             // ql[32]: element 32 nibble 1, element 96 nibble 5
  b6[128] = 0x9E;            // qh[0]: high bits 2 (el. 0), 3 (el. 32), 1 (el. 64), 2 (el. 96)
  auto* sc = reinterpret_cast<int8_t*>(b6.data() + 192);
  sc[0] = 3, sc[2] = -2, sc[4] = 4, sc[6] = -1, sc[8] = 7;
  b6[64] = 0x01;  // second half: ql[64] → element 128, qh[32] = 0, scale sc[8]
  const auto y6 = dequant(ggml_type::q6_k, b6, 256);
  CHECK(y6[0] == 22.5f);     // 0.5 * 3 * 15
  CHECK(y6[32] == -17.0f);   // 0.5 * -2 * 17
  CHECK(y6[64] == -28.0f);   // 0.5 * 4 * -14
  CHECK(y6[96] == -2.5f);    // 0.5 * -1 * 5
  CHECK(y6[128] == -108.5f);  // 0.5 * 7 * -31
}

namespace {

struct fmt {
  ggml_type type;
  std::size_t bytes;
  int64_t elems;
};
const fmt kFormats[] = {
    {ggml_type::q4_1, 20, 32}, {ggml_type::q5_0, 22, 32},  {ggml_type::q5_1, 24, 32},
    {ggml_type::q2_k, 84, 256}, {ggml_type::q3_k, 110, 256}, {ggml_type::q4_k, 144, 256},
    {ggml_type::q5_k, 176, 256}, {ggml_type::q6_k, 210, 256},
};

// Random blocks whose scales keep values near the size of trained weights.
std::vector<uint8_t> random_blocks(const fmt& f, int64_t n_values, std::mt19937& rng, float scale) {
  std::vector<uint8_t> b(std::size_t(n_values / f.elems) * f.bytes);
  for (auto& x : b) x = uint8_t(rng());
  for (std::size_t at = 0; at < b.size(); at += f.bytes) {
    switch (f.type) {
      case ggml_type::q4_1: put_half(b, at, scale / 8), put_half(b, at + 2, -scale); break;
      case ggml_type::q5_1: put_half(b, at, scale / 16), put_half(b, at + 2, -scale); break;
      case ggml_type::q5_0: put_half(b, at, scale / 16); break;
      case ggml_type::q2_k: put_half(b, at + 80, scale / 16), put_half(b, at + 82, scale / 32); break;
      case ggml_type::q3_k: put_half(b, at + 108, scale / 128); break;
      case ggml_type::q4_k:
      case ggml_type::q5_k: put_half(b, at, scale / 256), put_half(b, at + 2, scale / 128); break;
      case ggml_type::q6_k: put_half(b, at + 208, scale / 2048); break;
      default: break;
    }
  }
  return b;
}

}  // namespace

TEST_CASE("models of mixed legacy and k-quant types: each matrix keeps its kernel or becomes Q8_0") {
  // A 2-layer model, dims multiples of 256; every matrix gets another type (the mix of a
  // Q4_K_M file and more), the embedding table Q6_K. The reference file holds the same values:
  // Q4_K/Q5_K/Q6_K matrices as they are (they have kernels), the others quantized to Q8_0 from
  // the dequantized blocks, the embeddings as F32.
  const std::string dir = "/tmp/qllm_test_dequant_" + std::to_string(getpid());
  random_model_spec spec;
  spec.n_vocab = 512, spec.n_embd = 256, spec.n_layer = 2, spec.n_ff = 512, spec.n_head = 4, spec.n_head_kv = 2;
  spec.type = ggml_type::f32;
  write_random_model(dir + "_f32.gguf", spec);
  const auto src = gguf::file::open(dir + "_f32.gguf");
  gguf::writer mixed, ref;
  for (const auto& [key, v] : src.metadata()) {
    mixed.set(key, v);
    ref.set(key, v);
  }
  std::mt19937 rng(5);
  std::size_t next = 0;
  std::vector<std::string> mix;
  for (const auto& t : src.tensors()) {
    if (t.ne.size() == 1) {  // norms as they are
      mixed.add_tensor(t.name, t.type, t.ne, src.tensor_data(t), t.bytes);
      ref.add_tensor(t.name, t.type, t.ne, src.tensor_data(t), t.bytes);
      continue;
    }
    const int64_t n = t.ne[0] * t.ne[1];
    const fmt& f = t.name == "token_embd.weight" ? kFormats[7] : kFormats[next++ % std::size(kFormats)];
    const auto blocks = random_blocks(f, n, rng, 2.0f / std::sqrt(float(t.ne[0])));
    mixed.add_tensor(t.name, f.type, t.ne, blocks.data(), blocks.size());
    std::vector<float> vals(static_cast<std::size_t>(n));
    for (int64_t r = 0; r < t.ne[1]; ++r)
      ref::dequantize_row(f.type, blocks.data() + std::size_t(r) * blocks.size() / std::size_t(t.ne[1]),
                          vals.data() + r * t.ne[0], t.ne[0]);
    for (float v : vals) REQUIRE(std::isfinite(v));
    if (t.name == "token_embd.weight") {
      ref.add_tensor(t.name, ggml_type::f32, t.ne, vals.data(), vals.size() * 4);
    } else if (!converted_at_load(f.type)) {
      ref.add_tensor(t.name, f.type, t.ne, blocks.data(), blocks.size());
    } else {
      std::vector<block_q8_0> q(std::size_t(n / qk));
      ref::quantize_row_q8_0(vals.data(), q.data(), nullptr, n);
      ref.add_tensor(t.name, ggml_type::q8_0, t.ne, q.data(), q.size() * sizeof(block_q8_0));
    }
    mix.push_back(gguf::type_name(f.type));
  }
  mixed.write(dir + "_mixed.gguf");
  ref.write(dir + "_ref.gguf");
  const auto a = model::load(dir + "_mixed.gguf");
  const auto b = model::load(dir + "_ref.gguf");
  CHECK_FALSE(a->file_mapped());  // repacked or converted: nothing reads the file after load
  context_params cp;
  cp.n_threads = 2;
  context ca(a, cp), cb(b, cp);
  const std::vector<int32_t> toks = {1, 300, 17, 499, 42, 8, 256, 3};
  const auto la = ca.eval(toks, true);
  const std::vector<float> first(la.begin(), la.end());
  const auto lb = cb.eval(toks, true);
  REQUIRE(first.size() == lb.size());
  std::size_t diff = 0;
  double mag = 0;
  for (std::size_t i = 0; i < lb.size(); ++i) {
    diff += std::memcmp(&first[i], &lb[i], 4) != 0;
    mag = std::max(mag, double(std::fabs(lb[i])));
  }
  CHECK(diff == 0);
  CHECK(mag > 0.1);  // logits that mean something, not all zero
  CHECK(mix.size() == 2 * 7 + 2);
  std::remove((dir + "_f32.gguf").c_str());
  std::remove((dir + "_mixed.gguf").c_str());
  std::remove((dir + "_ref.gguf").c_str());
}

TEST_CASE("k-quant dots equal the dot of the dequantized rows") {
  // ref::dot_q*_k_q8_k works from its own unpacking of the blocks; dequantize_row is the reader
  // checked against hand-built blocks above. Both must describe the same numbers.
  std::mt19937 rng(3);
  for (const fmt& f : {kFormats[5], kFormats[6], kFormats[7]}) {
    CAPTURE(std::string(gguf::type_name(f.type)));
    const int64_t k = 1024;
    const auto blocks = random_blocks(f, k, rng, 1.0f);
    std::vector<float> w(k), x(k), xd(k);
    ref::dequantize_row(f.type, blocks.data(), w.data(), k);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (auto& v : x) v = g(rng);
    std::vector<block_q8_k> xq(k / 256);
    ref::quantize_row_q8_k(x.data(), xq.data(), k);
    double want = 0, mag = 0;
    for (int64_t i = 0; i < k; ++i) {
      xd[std::size_t(i)] = xq[std::size_t(i / 256)].d * float(xq[std::size_t(i / 256)].qs[i % 256]);
      want += double(w[std::size_t(i)]) * xd[std::size_t(i)];
      mag += std::fabs(double(w[std::size_t(i)]) * xd[std::size_t(i)]);
    }
    float got = 0;
    if (f.type == ggml_type::q4_k) got = ref::dot_q4_k_q8_k(reinterpret_cast<const block_q4_k*>(blocks.data()), xq.data(), k / 256);
    if (f.type == ggml_type::q5_k) got = ref::dot_q5_k_q8_k(reinterpret_cast<const block_q5_k*>(blocks.data()), xq.data(), k / 256);
    if (f.type == ggml_type::q6_k) got = ref::dot_q6_k_q8_k(reinterpret_cast<const block_q6_k*>(blocks.data()), xq.data(), k / 256);
    CHECK(std::fabs(got - want) <= 1e-5 * mag);
    // and the bsums are the group sums
    for (const auto& b : xq)
      for (int gi = 0; gi < 16; ++gi) {
        int s = 0;
        for (int e = 0; e < 16; ++e) s += b.qs[16 * gi + e];
        CHECK(b.bsums[gi] == s);
      }
  }
}

namespace {
// Relative RMS of a's logits against b's, and how many of their top-1 tokens agree.
std::pair<double, int> compare_logits(const std::vector<float>& la, const std::vector<float>& lb,
                                      std::size_t n_tok, std::size_t n_vocab) {
  double num = 0, den = 0;
  int agree = 0;
  for (std::size_t tk = 0; tk < n_tok; ++tk) {
    std::size_t ia = 0, ib = 0;
    for (std::size_t v = 0; v < n_vocab; ++v) {
      const std::size_t i = tk * n_vocab + v;
      num += (la[i] - lb[i]) * double(la[i] - lb[i]);
      den += double(lb[i]) * lb[i];
      if (la[i] > la[tk * n_vocab + ia]) ia = v;
      if (lb[i] > lb[tk * n_vocab + ib]) ib = v;
    }
    agree += ia == ib;
  }
  return {den > 0 ? std::sqrt(num / den) : 1.0, agree};
}
}  // namespace

TEST_CASE("Q4_K, Q5_K and Q6_K models run their kernels close to an F32 twin of the same values") {
  // Every matrix in one k-type; twins hold the dequantized values as F32 (exact) and as Q8_0.
  // The k-model's gap to the F32 twin is the Q8_K quantization of activations only: it must be
  // of the size of the Q8_0 twin's gap (Q8_0 activations plus Q8_0 weights), not more.
  const std::string dir = "/tmp/qllm_test_kmodel_" + std::to_string(getpid());
  random_model_spec spec;
  spec.n_vocab = 512, spec.n_embd = 256, spec.n_layer = 2, spec.n_ff = 512, spec.n_head = 4, spec.n_head_kv = 2;
  spec.type = ggml_type::f32;
  write_random_model(dir + "_f32.gguf", spec);
  const auto src = gguf::file::open(dir + "_f32.gguf");
  for (const fmt& f : {kFormats[5], kFormats[6], kFormats[7]}) {
    CAPTURE(std::string(gguf::type_name(f.type)));
    gguf::writer kq, twin, twin8;
    for (const auto& [key, v] : src.metadata()) {
      kq.set(key, v);
      twin.set(key, v);
      twin8.set(key, v);
    }
    std::mt19937 rng(11);
    for (const auto& t : src.tensors()) {
      if (t.ne.size() == 1) {
        for (auto* w : {&kq, &twin, &twin8}) w->add_tensor(t.name, t.type, t.ne, src.tensor_data(t), t.bytes);
        continue;
      }
      const int64_t n = t.ne[0] * t.ne[1];
      const auto blocks = random_blocks(f, n, rng, 2.0f / std::sqrt(float(t.ne[0])));
      std::vector<float> vals(static_cast<std::size_t>(n));
      ref::dequantize_row(f.type, blocks.data(), vals.data(), n);
      std::vector<block_q8_0> q8(std::size_t(n / qk));
      ref::quantize_row_q8_0(vals.data(), q8.data(), nullptr, n);
      kq.add_tensor(t.name, f.type, t.ne, blocks.data(), blocks.size());
      twin.add_tensor(t.name, ggml_type::f32, t.ne, vals.data(), vals.size() * 4);
      twin8.add_tensor(t.name, ggml_type::q8_0, t.ne, q8.data(), q8.size() * sizeof(block_q8_0));
    }
    kq.write(dir + "_k.gguf");
    twin.write(dir + "_twin.gguf");
    twin8.write(dir + "_twin8.gguf");
    const auto a = model::load(dir + "_k.gguf");
    CHECK(a->weight_type() == f.type);
    const std::vector<int32_t> toks = {1, 300, 17, 499, 42, 8, 256, 3};
    std::vector<float> la;
    for (int threads : {1, 2}) {  // one result for any thread count
      context_params cp;
      cp.n_threads = threads;
      context ca(a, cp);
      const auto l = ca.eval(toks, true);
      if (la.empty())
        la.assign(l.begin(), l.end());
      else
        CHECK(std::memcmp(la.data(), l.data(), la.size() * 4) == 0);
    }
    auto logits = [&](const std::string& path) {
      context c(model::load(path), context_params{});
      const auto l = c.eval(toks, true);
      return std::vector<float>(l.begin(), l.end());
    };
    const auto lb = logits(dir + "_twin.gguf");
    const auto l8 = logits(dir + "_twin8.gguf");
    const auto [rel, agree] = compare_logits(la, lb, toks.size(), 512);
    const auto [rel8, agree8] = compare_logits(l8, lb, toks.size(), 512);
    MESSAGE(std::string(gguf::type_name(f.type)) << ": relative RMS of logits vs the F32 twin " << rel
                                                 << " (Q8_0 twin " << rel8 << "), top-1 " << agree
                                                 << "/" << toks.size());
    CHECK(rel > 0.0);  // the k-kernels ran, not the F32 path
    CHECK(rel < 2.0 * rel8 + 1e-3);
    CHECK(agree >= 7);
  }
  for (const char* s : {"_f32.gguf", "_k.gguf", "_twin.gguf", "_twin8.gguf"}) std::remove((dir + s).c_str());
}

TEST_CASE("k-quant rows whose length is not a multiple of 256 are refused naming the tensor") {
  random_model_spec spec;  // n_embd 64: no k-quant row fits
  spec.type = ggml_type::f32;
  const std::string path = "/tmp/qllm_test_dequant_short_" + std::to_string(getpid()) + ".gguf";
  write_random_model(path, spec);
  const auto src = gguf::file::open(path);
  gguf::writer w;
  for (const auto& [key, v] : src.metadata()) w.set(key, v);
  bool threw = false;
  try {
    for (const auto& t : src.tensors()) {
      if (t.name == "blk.0.attn_q.weight") {
        std::vector<uint8_t> blocks(144 * 16, 0);
        w.add_tensor(t.name, ggml_type::q4_k, t.ne, blocks.data(), blocks.size());
      } else {
        w.add_tensor(t.name, t.type, t.ne, src.tensor_data(t), t.bytes);
      }
    }
  } catch (const error& e) {
    threw = true;
    CHECK(std::string(e.what()).find("blk.0.attn_q.weight") != std::string::npos);
  }
  CHECK(threw);  // the writer refuses to write it (the reader applies the same rule to files)
  std::remove(path.c_str());
}
