// Block layouts, fp16/bf16 conversions and the scalar reference against double precision.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "qllm/formats.hpp"
#include "qllm/reference.hpp"
#include "test_util.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#include "qllm/cpu_features.hpp"
#endif

using namespace qllm;

namespace {
bool is_nan16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
[[maybe_unused]] uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }
}  // namespace

TEST_CASE("fp16: every one of the 65,536 patterns round-trips through fp32") {
  int checked = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(uint16_t(h));
    if (is_nan16(uint16_t(h))) {
      CHECK(std::isnan(f));
      CHECK(is_nan16(fp32_to_fp16(f)));
      continue;
    }
    REQUIRE(fp32_to_fp16(f) == h);
    ++checked;
  }
  CHECK(checked == 65536 - 2 * 1023);
}

TEST_CASE("fp16: known values, subnormals, inf") {
  CHECK(fp16_to_fp32(0x3c00) == 1.0f);
  CHECK(fp16_to_fp32(0xc000) == -2.0f);
  CHECK(fp16_to_fp32(0x7bff) == 65504.0f);
  CHECK(fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(fp16_to_fp32(0x03ff) == std::ldexp(1023.0f, -24));
  CHECK(std::isinf(fp16_to_fp32(0x7c00)));
  CHECK(fp32_to_fp16(65520.0f) == 0x7c00);   // halfway to 65536 rounds to even: overflow
  CHECK(fp32_to_fp16(65519.996f) == 0x7bff);
  CHECK(fp32_to_fp16(1e-8f) == 0x0000);       // below half the smallest subnormal
  CHECK(fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);  // exactly half: ties to even (0)
  CHECK(fp32_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(fp32_to_fp16(-0.0f) == 0x8000);
  CHECK(fp32_to_fp16(std::numeric_limits<float>::infinity()) == 0x7c00);
}

TEST_CASE("fp16: every midpoint between neighbours rounds to the even one") {
  for (uint32_t h = 0; h < 0x7bff; ++h) {  // positive finite neighbours h, h+1
    const double lo = fp16_to_fp32(uint16_t(h)), hi = fp16_to_fp32(uint16_t(h + 1));
    const float mid = float((lo + hi) / 2);  // exact in fp32
    const uint16_t even = (h & 1u) ? uint16_t(h + 1) : uint16_t(h);
    REQUIRE(fp32_to_fp16(mid) == even);
    REQUIRE(fp32_to_fp16(std::nextafter(mid, 0.0f)) == h);
    REQUIRE(fp32_to_fp16(std::nextafter(mid, 1e9f)) == h + 1);
    REQUIRE(fp32_to_fp16(-mid) == (even | 0x8000u));
  }
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_to_fp16(float f) {
  return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) static float hw_to_fp32(uint16_t h) { return _cvtsh_ss(h); }

TEST_CASE("fp16: agrees with the F16C instructions") {
  if (!cpu_features_detect().f16c) return;
  for (uint32_t h = 0; h < 65536; ++h) REQUIRE(bits(fp16_to_fp32(uint16_t(h))) == bits(hw_to_fp32(uint16_t(h))));
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    const float f = std::bit_cast<float>(uint32_t(rng()));
    if (std::isnan(f)) continue;
    REQUIRE(fp32_to_fp16(f) == hw_to_fp16(f));
  }
}
#endif

TEST_CASE("bf16: round trip of all patterns, ties to even, NaN stays NaN") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(uint16_t(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(bf16_to_fp32(fp32_to_bf16(f))));
      continue;
    }
    REQUIRE(fp32_to_bf16(f) == h);
    if ((h & 0x7f80u) == 0x7f80u) continue;  // next value up would be inf/NaN
    const float tie = std::bit_cast<float>((h << 16) | 0x8000u);
    REQUIRE(fp32_to_bf16(tie) == ((h & 1u) ? h + 1 : h));
    REQUIRE(fp32_to_bf16(std::bit_cast<float>((h << 16) | 0x7fffu)) == h);
  }
  CHECK(fp32_to_bf16(1.0f) == 0x3f80);
  CHECK(std::isnan(bf16_to_fp32(fp32_to_bf16(std::bit_cast<float>(0x7f800001u)))));
}

TEST_CASE("Q4_0: a hand-computed block has the exact bytes") {
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16);  // max magnitude -16: d = -16 / -8 = 2
  block_q4_0 b;
  ref::quantize_row_q4_0(x, &b, 32);
  uint8_t raw[18];
  std::memcpy(raw, &b, 18);
  CHECK(raw[0] == 0x00);
  CHECK(raw[1] == 0x40);  // fp16 2.0 = 0x4000, little endian
  // q_j = min(15, int(x_j / 2 + 8.5)): q0 = 0, q1 = 1, q2 = 1, q3 = 2, q16 = 8, q17 = 9, q31 = 15
  CHECK(raw[2 + 0] == 0x80);
  CHECK(raw[2 + 1] == 0x91);
  CHECK(raw[2 + 2] == 0x91);
  CHECK(raw[2 + 3] == 0xa2);
  CHECK(raw[2 + 15] == 0xf8);
  float y[32];
  ref::dequantize_row_q4_0(&b, y, 32);
  CHECK(y[0] == -16.0f);
  CHECK(y[31] == 14.0f);  // 15 - 8 = 7 steps of 2
}

TEST_CASE("Q8_0: a hand-computed block has the exact bytes, ties round to even") {
  float x[32] = {127.0f, 2.5f, -2.5f, 3.5f, 0.5f, -0.5f, 1.5f, -127.0f};  // amax 127: d = 1
  block_q8_0 b;
  int32_t sum = 0;
  ref::quantize_row_q8_0(x, &b, &sum, 32);
  CHECK(b.d == 0x3c00);
  const int8_t want[8] = {127, 2, -2, 4, 0, 0, 2, -127};
  for (int j = 0; j < 8; ++j) CHECK(b.qs[j] == want[j]);
  for (int j = 8; j < 32; ++j) CHECK(b.qs[j] == 0);
  CHECK(sum == 6);
  block_q8_0 z;
  float zeros[32] = {};
  ref::quantize_row_q8_0(zeros, &z, nullptr, 32);
  CHECK(z.d == 0);
  for (int j = 0; j < 32; ++j) CHECK(z.qs[j] == 0);
}

TEST_CASE("round-trip error budgets (RMSE relative to the signal RMS)") {
  const int64_t k = 32 * 4096;
  const auto x = test::gaussian(k, 1);
  std::vector<block_q4_0> q4(k / 32);
  std::vector<block_q8_0> q8(k / 32);
  std::vector<float> y(k);
  auto rel_rmse = [&](const std::vector<float>& r) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < k; ++i) {
      e += double(r[i] - x[i]) * double(r[i] - x[i]);
      s += double(x[i]) * double(x[i]);
    }
    return std::sqrt(e / s);
  };
  ref::quantize_row_q4_0(x.data(), q4.data(), k);
  ref::dequantize_row_q4_0(q4.data(), y.data(), k);
  const double e4 = rel_rmse(y);
  ref::quantize_row_q8_0(x.data(), q8.data(), nullptr, k);
  ref::dequantize_row_q8_0(q8.data(), y.data(), k);
  const double e8 = rel_rmse(y);
  MESSAGE("relative RMSE: q4_0 " << e4 << ", q8_0 " << e8);
  CHECK(e4 < 0.095);  // 4 bits: step amax/8
  CHECK(e4 > 0.05);   // and it really is a 4-bit format
  CHECK(e8 < 0.0065);  // 8 bits: step amax/127
}

TEST_CASE("dot products agree with double precision") {
  for (int64_t nb : {1, 3, 128, 344}) {
    const int64_t k = nb * 32;
    const auto w = test::gaussian(k, 2 + uint32_t(nb)), x = test::gaussian(k, 3 + uint32_t(nb));
    std::vector<block_q4_0> w4(nb);
    std::vector<block_q8_0> w8(nb), x8(nb);
    ref::quantize_row_q4_0(w.data(), w4.data(), k);
    ref::quantize_row_q8_0(w.data(), w8.data(), nullptr, k);
    ref::quantize_row_q8_0(x.data(), x8.data(), nullptr, k);
    std::vector<float> wd4(k), wd8(k), xd(k);
    ref::dequantize_row_q4_0(w4.data(), wd4.data(), k);
    ref::dequantize_row_q8_0(w8.data(), wd8.data(), k);
    ref::dequantize_row_q8_0(x8.data(), xd.data(), k);
    double e4 = 0, e8 = 0, ef = 0, a4 = 0, a8 = 0, af = 0;
    for (int64_t i = 0; i < k; ++i) {
      e4 += double(wd4[i]) * xd[i];
      a4 += std::fabs(double(wd4[i]) * xd[i]);
      e8 += double(wd8[i]) * xd[i];
      a8 += std::fabs(double(wd8[i]) * xd[i]);
      ef += double(w[i]) * x[i];
      af += std::fabs(double(w[i]) * x[i]);
    }
    // float accumulation over nb blocks (or k/8 lanes): a few ulps of the absolute sum
    CHECK(std::fabs(ref::dot_q4_0_q8_0(w4.data(), x8.data(), nb) - e4) <= 1e-6 * a4 * nb + 1e-6);
    CHECK(std::fabs(ref::dot_q8_0_q8_0(w8.data(), x8.data(), nb) - e8) <= 1e-6 * a8 * nb + 1e-6);
    CHECK(std::fabs(ref::dot_f32(w.data(), x.data(), k) - ef) <= 1e-6 * af * (k / 8 + 3));
    std::vector<uint16_t> wh(k);
    double eh = 0;
    for (int64_t i = 0; i < k; ++i) {
      wh[i] = fp32_to_fp16(w[i]);
      eh += double(fp16_to_fp32(wh[i])) * x[i];
    }
    CHECK(std::fabs(ref::dot_f16_f32(wh.data(), x.data(), k) - eh) <= 1e-6 * af * (k / 8 + 3));
  }
}

TEST_CASE("exact block dot products on extreme values") {
  block_q4_0 w{};
  block_q8_0 x{};
  for (int j = 0; j < 16; ++j) w.qs[j] = 0x00;  // all -8
  for (int j = 0; j < 32; ++j) x.qs[j] = -127;
  CHECK(ref::dot_block_q4_0_q8_0(w, x) == 32 * 8 * 127);
  block_q8_0 w8{};
  for (int j = 0; j < 32; ++j) w8.qs[j] = -128;
  CHECK(ref::dot_block_q8_0_q8_0(w8, x) == 32 * 128 * 127);
}

TEST_CASE("reference matmul agrees with double precision for every weight type") {
  const int64_t n = 9, k = 96, m = 3;
  const auto w = test::gaussian(n * k, 11), x = test::gaussian(m * k, 12);
  std::vector<block_q4_0> w4(n * k / 32);
  std::vector<block_q8_0> w8(n * k / 32);
  std::vector<uint16_t> wh(n * k);
  ref::quantize_row_q4_0(w.data(), w4.data(), n * k);
  ref::quantize_row_q8_0(w.data(), w8.data(), nullptr, n * k);
  for (int64_t i = 0; i < n * k; ++i) wh[i] = fp32_to_fp16(w[i]);
  std::vector<float> y(m * n);
  struct {
    ggml_type type;
    const void* data;
    double budget;  // relative to the RMS of the exact products' sum
  } cases[] = {{ggml_type::f32, w.data(), 1e-5},
               {ggml_type::f16, wh.data(), 2e-3},
               {ggml_type::q8_0, w8.data(), 2e-2},
               {ggml_type::q4_0, w4.data(), 0.25}};
  for (const auto& c : cases) {
    ref::matmul(c.type, c.data, n, k, x.data(), m, y.data());
    double err = 0, sig = 0;
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t r = 0; r < n; ++r) {
        double e = 0;
        for (int64_t i = 0; i < k; ++i) e += double(w[r * k + i]) * x[t * k + i];
        err += (y[t * n + r] - e) * (y[t * n + r] - e);
        sig += e * e;
      }
    }
    CHECK(std::sqrt(err / sig) < c.budget);
  }
  CHECK_THROWS(ref::matmul(ggml_type::q2_k, w4.data(), n, k, x.data(), m, y.data()));
  CHECK_THROWS(ref::matmul(ggml_type::q4_0, w4.data(), n, 33, x.data(), m, y.data()));
}

TEST_CASE("canonical float operations against double precision") {
  const int64_t n = 4096 + 13;
  const auto x = test::gaussian(n, 21, 3.0f), w = test::gaussian(n, 22);
  std::vector<float> out(n), tmp(x);
  ref::rmsnorm(out.data(), x.data(), w.data(), n, 1e-5f);
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double sc = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int64_t i = 0; i < n; ++i) REQUIRE(std::fabs(out[i] - x[i] * sc * w[i]) <= 1e-5 * (1 + std::fabs(x[i] * sc * w[i])));
  ref::softmax(tmp.data(), n);
  double mx = -1e30, den = 0;
  for (float v : x) mx = std::max(mx, double(v));
  for (float v : x) den += std::exp(v - mx);
  for (int64_t i = 0; i < n; ++i) REQUIRE(std::fabs(tmp[i] - std::exp(x[i] - mx) / den) <= 1e-6 * std::exp(x[i] - mx) / den * 8 + 1e-12);
  for (float v : {-87.0f, -20.0f, -1.0f, -1e-3f, 0.0f, 1e-3f, 0.5f, 1.0f, 10.0f, 80.0f}) {
    const double e = std::exp(double(v));
    CHECK(std::fabs(ref::exp_canonical(v) - e) <= 3e-7 * e);
  }
  ref::silu_mul(out.data(), x.data(), w.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = x[i], want = g / (1 + std::exp(-g)) * w[i];
    REQUIRE(std::fabs(out[i] - want) <= 1e-6 * (1 + std::fabs(want)));
  }
}

TEST_CASE("rope rotates pairs by pos * base^(-2i/d) and preserves norms") {
  const int64_t hd = 16, nh = 3;
  auto x = test::gaussian(hd * nh, 31);
  const auto x0 = x;
  std::vector<float> c(hd), s(hd);
  ref::rope_table(c.data(), s.data(), hd, hd, 7.0, 10000.0);
  ref::rope(x.data(), nh, hd, c.data(), s.data());
  for (int64_t h = 0; h < nh; ++h) {
    for (int64_t i = 0; i < hd; i += 2) {
      const double th = 7.0 * std::pow(10000.0, -double(i) / hd);
      const double a = x0[h * hd + i], b = x0[h * hd + i + 1];
      CHECK(std::fabs(x[h * hd + i] - (a * std::cos(th) - b * std::sin(th))) < 1e-5);
      CHECK(std::fabs(x[h * hd + i + 1] - (a * std::sin(th) + b * std::cos(th))) < 1e-5);
    }
  }
  // pairs beyond rot_dim stay put
  ref::rope_table(c.data(), s.data(), hd, 8, 7.0, 10000.0);
  auto y = x0;
  ref::rope(y.data(), 1, hd, c.data(), s.data());
  for (int64_t i = 8; i < hd; ++i) CHECK(y[i] == x0[i]);
  CHECK(y[0] != x0[0]);
}
