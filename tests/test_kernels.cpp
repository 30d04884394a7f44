// Every kernel of every table against the scalar reference. Budget: 0 ULP. The kernels
// reproduce the canonical accumulation order of reference.hpp, so results must be identical bit
// for bit (integer block sums exact, then one fma chain per output).
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "kernels/kernel_table.hpp"
#include "qllm/reference.hpp"
#include "test_util.hpp"

using namespace qllm;
using kernels::kernel_table;

namespace {

std::vector<const kernel_table*> tables_under_test() {
#if QLLM_TEST_ALL_TABLES
  return kernels::compiled_tables();  // emulated build: run every table, whatever the CPU says
#else
  return kernels::runnable_tables();
#endif
}

// Runs W (n x k, GGUF blocks) through table t's quantized gemm; x quantized by the reference.
template <class Block, class Panel>
std::vector<float> run_qgemm(const kernel_table& t, bool q4, const std::vector<Block>& w,
                             int64_t n, int64_t k, const std::vector<float>& x, int64_t m,
                             bool interleaved = false) {
  const int64_t nb = k / 32, np = (n + 7) / 8;
  std::vector<Panel> panels(static_cast<size_t>(np * nb));
  if constexpr (sizeof(Block) == sizeof(block_q4_0))
    kernels::repack_q4_0x8(w.data(), n, nb, panels.data());
  else
    kernels::repack_q8_0x8(w.data(), n, nb, panels.data());
  std::vector<block_q8_0> xq(static_cast<size_t>(m * nb));
  std::vector<int32_t> xs(static_cast<size_t>(m * nb));
  for (int64_t i = 0; i < m; ++i)
    ref::quantize_row_q8_0(x.data() + i * k, xq.data() + i * nb, xs.data() + i * nb, k);
  std::vector<float> xd(xq.size());
  for (std::size_t i = 0; i < xq.size(); ++i) xd[i] = fp16_to_fp32(xq[i].d);
  const int64_t ldy = n + 3;  // a stride wider than n: nothing may be written past row n
  std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
  kernels::qgemm_args a{panels.data(), nb, n, xq.data(), xs.data(), xd.data(), m, y.data(), ldy};
  std::vector<int8_t> tq;  // the token-interleaved copy a step of continuous batching carries
  std::vector<int32_t> ts;
  std::vector<float> td;
  if (interleaved) {
    tq.resize(static_cast<size_t>(32 * m * nb));
    ts.resize(static_cast<size_t>(m * nb));
    td.resize(ts.size());
    // in two block ranges, as threads share it
    kernels::interleave_tokens(xq.data(), xs.data(), xd.data(), m, nb, 0, nb / 2, tq.data(), ts.data(), td.data());
    kernels::interleave_tokens(xq.data(), xs.data(), xd.data(), m, nb, nb / 2, nb, tq.data(), ts.data(), td.data());
    a.xt_q = tq.data();
    a.xt_sum = ts.data();
    a.xt_d = td.data();
  }
  // two calls over split panel ranges must equal one call over all
  const int64_t mid = np / 2;
  (q4 ? t.gemm_q4_0x8 : t.gemm_q8_0x8)(a, 0, mid);
  (q4 ? t.gemm_q4_0x8 : t.gemm_q8_0x8)(a, mid, np);
  std::vector<float> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = n; r < ldy; ++r) REQUIRE(y[i * ldy + r] == -7.0f);
    std::memcpy(out.data() + i * n, y.data() + i * ldy, size_t(n) * sizeof(float));
  }
  return out;
}

// The same for a k-quant type: GGUF super-blocks → panels → table t's gemm, x quantized to Q8_K.
template <class Block, class Panel>
std::vector<float> run_kgemm(const kernel_table& t, const std::vector<Block>& w, int64_t n, int64_t k,
                             const std::vector<float>& x, int64_t m) {
  const int64_t nb = k / qk_k, np = (n + 7) / 8;
  std::vector<Panel> panels(static_cast<size_t>(np * nb));
  auto gemm = t.gemm_q4_kx8;
  if constexpr (std::is_same_v<Block, block_q4_k>) {
    kernels::repack_q4_kx8(w.data(), n, nb, panels.data());
  } else if constexpr (std::is_same_v<Block, block_q5_k>) {
    kernels::repack_q5_kx8(w.data(), n, nb, panels.data());
    gemm = t.gemm_q5_kx8;
  } else {
    kernels::repack_q6_kx8(w.data(), n, nb, panels.data());
    gemm = t.gemm_q6_kx8;
  }
  std::vector<block_q8_k> xq(static_cast<size_t>(m * nb));
  for (int64_t i = 0; i < m; ++i) ref::quantize_row_q8_k(x.data() + i * k, xq.data() + i * nb, k);
  const int64_t ldy = n + 3;
  std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
  const kernels::kgemm_args a{panels.data(), nb, n, xq.data(), m, y.data(), ldy};
  const int64_t mid = np / 2;
  gemm(a, 0, mid);
  gemm(a, mid, np);
  std::vector<float> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = n; r < ldy; ++r) REQUIRE(y[i * ldy + r] == -7.0f);
    std::memcpy(out.data() + i * n, y.data() + i * ldy, size_t(n) * sizeof(float));
  }
  return out;
}

// Blocks with every quant, scale and min at its extremes: the int16 bounds of the kernels.
template <class Block>
void make_extreme(std::vector<Block>& w, uint32_t seed) {
  uint32_t s = seed;
  for (auto& b : w) {
    auto* bytes = reinterpret_cast<uint8_t*>(&b);
    for (size_t i = 0; i < sizeof b; ++i) {
      s = s * 1664525u + 1013904223u;
      bytes[i] = (s >> 24) & 1 ? 0xff : uint8_t(s >> 16);
    }
    if constexpr (std::is_same_v<Block, block_q6_k>) {
      b.d = 0x2c00;  // 1/16
      for (auto& c : b.scales) c = (s >> 3) & 1 ? -128 : 127;
    } else {
      b.d = 0x2c00;
      b.dmin = 0x2800;
    }
  }
}

}  // namespace

TEST_CASE("there is at least one table beyond scalar where the CPU has SIMD") {
  const auto ts = tables_under_test();
  std::string names;
  for (auto* t : ts) names += std::string(t->name) + " ";
  MESSAGE("tables under test: " << names);
  CHECK(ts.back() == kernels::find_table("scalar"));
  const cpu_features& f = cpu_features_detect();
  const bool simd = (f.avx2 && f.fma && f.f16c) || f.neon;  // else (Nehalem, say) scalar only
  MESSAGE("cpu features: " << cpu_features_string(f));
#if !QLLM_TEST_ALL_TABLES
  if (simd) CHECK(ts.size() >= 2);
  else CHECK(ts.size() == 1);
  if (!std::getenv("QLLM_ISA"))
    CHECK(&kernels::active() == ts.front());  // the best runnable table is the one chosen
#else
  CHECK(ts.size() >= 2);
  (void)simd;
#endif
}

TEST_CASE("decode prefetch distance: none on AMD before family 0x1a, 8 KiB elsewhere") {
  cpu_features f;
  f.avx2 = f.fma = f.f16c = true;
  f.amd = true;
  f.family = 0x17;  // Zen 1/2
  CHECK(kernels::default_prefetch_bytes(f) == 0);
  f.family = 0x19;  // Zen 3 without AVX-512, Zen 4 with it: the same
  CHECK(kernels::default_prefetch_bytes(f) == 0);
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = f.avx512_vnni = true;
  CHECK(kernels::default_prefetch_bytes(f) == 0);
  f.family = 0x1a;  // Zen 5
  CHECK(kernels::default_prefetch_bytes(f) == 8192);
  f.amd = false;
  f.family = 6;  // Intel
  CHECK(kernels::default_prefetch_bytes(f) == 8192);
  f.avx512f = false;
  CHECK(kernels::default_prefetch_bytes(f) == 8192);
  if (!std::getenv("QLLM_PREFETCH"))  // the distance in use is this CPU's default
    CHECK(kernels::q_prefetch_bytes() == kernels::default_prefetch_bytes(cpu_features_detect()));
  if (!std::getenv("QLLM_PREFETCH_STEP")) CHECK(kernels::step_prefetch_bytes() == 2048);  // every CPU
}

TEST_CASE("quantize_row_q8_0: bytes and sums equal the reference") {
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t k : {32, 64, 96, 4096 + 32}) {
      auto x = test::gaussian(static_cast<size_t>(k), uint32_t(k), 2.0f);
      for (int j = 0; j < 32; ++j) x[size_t(j)] = 0.0f;  // an all-zero block
      if (k >= 64) {  // a block with exact ties: amax 127 -> d = 1
        x[32] = 127.0f;
        x[33] = 2.5f;
        x[34] = -2.5f;
        x[35] = 0.5f;
      }
      const int64_t nb = k / 32;
      std::vector<block_q8_0> a(static_cast<size_t>(nb)), b(static_cast<size_t>(nb));
      std::vector<int32_t> sa(static_cast<size_t>(nb)), sb(static_cast<size_t>(nb));
      ref::quantize_row_q8_0(x.data(), a.data(), sa.data(), k);
      t->quantize_row_q8_0(x.data(), b.data(), sb.data(), k);
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(block_q8_0)) == 0);
      CHECK(sa == sb);
    }
  }
}

// Blocks whose largest value is so small that d = amax / 127 is a denormal and 1 / d overflows
// (amax below about 3.7e-37): all quants 0 on every table (before: x * inf, a float-to-int
// overflow), and the reference quantizers for Q4_0 and Q8_K alike.
TEST_CASE("quantization of blocks in the denormal range: zero quants, no overflow, on every table") {
  for (float amax : {1e-45f, 1.7e-41f, 3e-39f, 1e-37f, 3.6e-37f, 4e-37f, 1.2e-38f}) {
    CAPTURE(amax);
    std::vector<float> x(256);
    for (size_t i = 0; i < x.size(); ++i) x[i] = amax * float(int(i % 7) - 3) / 3.0f;
    std::vector<block_q8_0> a(8), b(8);
    std::vector<int32_t> sa(8), sb(8);
    ref::quantize_row_q8_0(x.data(), a.data(), sa.data(), 256);
    for (const auto& blk : a)
      for (int8_t q : blk.qs) CHECK((q >= -127 && q <= 127));
    for (auto* t : tables_under_test()) {
      CAPTURE(std::string(t->name));
      t->quantize_row_q8_0(x.data(), b.data(), sb.data(), 256);
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(block_q8_0)) == 0);
      CHECK(sa == sb);
    }
    block_q8_k k{};
    ref::quantize_row_q8_k(x.data(), &k, 256);
    int sum = 0;
    for (int8_t q : k.qs) sum += std::abs(q);
    if (1.0f / (amax / 127.0f) > 3.4e38f) CHECK(sum == 0);  // 1/d overflows: zero quants
    else CHECK(sum > 0);
    std::vector<block_q4_0> q4(8);
    ref::quantize_row_q4_0(x.data(), q4.data(), 256);
    for (const auto& blk : q4)
      for (uint8_t q : blk.qs) CHECK(((q & 15) <= 15 && (q >> 4) <= 15));
  }
}

// A block with a NaN or an infinity (hostile weights, an overflowing activation) quantizes to a
// NaN scale and zero quants on every table: before, the float-to-int conversion of NaN gave
// INT_MIN quants whose sums overflowed in the Q4_0 kernels (undefined behaviour, found by fuzzing).
TEST_CASE("quantize_row_q8_0: non-finite blocks become NaN scale, zero quants, on every table") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (float bad : {inf, -inf, nan, -nan}) {
      for (int at : {0, 5, 31}) {
        auto x = test::gaussian(96, uint32_t(at + 1), 2.0f);
        x[size_t(32 + at)] = bad;  // the middle block only
        std::vector<block_q8_0> a(3), b(3);
        std::vector<int32_t> sa(3, -1), sb(3, -1);
        ref::quantize_row_q8_0(x.data(), a.data(), sa.data(), 96);
        t->quantize_row_q8_0(x.data(), b.data(), sb.data(), 96);
        CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(block_q8_0)) == 0);
        CHECK(sa == sb);
        CHECK(b[1].d == ref::fp16_nan_q8);
        CHECK(sb[1] == 0);
        for (int j = 0; j < 32; ++j) REQUIRE(b[1].qs[j] == 0);
        CHECK(sb[0] != 0);  // the finite blocks are untouched
        // through the Q4_0 gemm: the NaN reaches that output, nothing overflows
        const auto w = test::gaussian(8 * 96, 9);
        std::vector<block_q4_0> wq(8 * 3);
        ref::quantize_row_q4_0(w.data(), wq.data(), 8 * 96);
        std::vector<kernels::block_q4_0x8> panel(3);
        kernels::repack_q4_0x8(wq.data(), 8, 3, panel.data());
        std::vector<float> y(8);
        const float bd[3] = {fp16_to_fp32(b[0].d), fp16_to_fp32(b[1].d), fp16_to_fp32(b[2].d)};
        const kernels::qgemm_args ga{panel.data(), 3, 8, b.data(), sb.data(), bd, 1, y.data(), 8};
        t->gemm_q4_0x8(ga, 0, 1);
        for (float v : y) CHECK(std::isnan(v));
      }
    }
  }
}

// The Q8_K activations of the k-quant kernels: the same scale, quants and 16-sums as the
// reference on every table (ties, an all-zero block, the denormal range, NaN and infinities).
TEST_CASE("quantize_row_q8_k: bytes equal the reference on every table") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t k = 7 * 256;
  auto x = test::gaussian(static_cast<size_t>(k), 17, 3.0f);
  for (int j = 0; j < 256; ++j) x[size_t(j)] = 0.0f;  // block 0: all zero
  x[256] = 127.0f;  // block 1: amax 127 -> d = 1, exact ties round to even
  for (int j = 1; j < 256; ++j) x[size_t(256 + j)] = float(j % 9 - 4) * 0.5f + (j % 2 ? 0.0f : 60.0f);
  for (int j = 0; j < 256; ++j) x[size_t(512 + j)] = 2e-39f * float(j % 5 - 2);  // block 2: denormal d
  x[768 + 100] = inf;  // block 3
  x[1024 + 255] = nan;  // block 4; block 5 stays Gaussian
  for (int j = 0; j < 256; ++j) x[size_t(1536 + j)] = 1e-36f * float(j % 7 - 3) / 3.0f;  // block 6: d
  // denormal, 1/d still finite
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (const int64_t n : {int64_t(256), k}) {
      CAPTURE(n);
      std::vector<block_q8_k> a(static_cast<size_t>(n / 256)), b(a.size());
      std::memset(b.data(), 0x5a, b.size() * sizeof(block_q8_k));  // every byte must be written
      ref::quantize_row_q8_k(x.data() + (n == k ? 0 : 5 * 256), a.data(), n);
      t->quantize_row_q8_k(x.data() + (n == k ? 0 : 5 * 256), b.data(), n);
      for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        CHECK(std::memcmp(a[i].qs, b[i].qs, sizeof a[i].qs) == 0);
        CHECK(std::memcmp(a[i].bsums, b[i].bsums, sizeof a[i].bsums) == 0);
        if (std::isnan(a[i].d)) CHECK(std::isnan(b[i].d));
        else CHECK(a[i].d == b[i].d);
      }
      if (n == k) {
        CHECK(b[1].d == 1.0f);
        CHECK(std::isnan(b[3].d));
        CHECK(std::isnan(b[4].d));
        int nonzero = 0;
        for (int8_t q : b[5].qs) nonzero += q != 0;
        CHECK(nonzero > 200);
        CHECK(b[6].d < std::numeric_limits<float>::min());  // block 6 is the case it means to be
        int nonzero6 = 0;
        for (int8_t q : b[6].qs) nonzero6 += q != 0;
        CHECK(nonzero6 > 100);
      }
    }
  }
}

TEST_CASE("gemm Q4_0 and Q8_0 panels: every shape equals the reference bit for bit") {
  // Panels split in two calls at np / 2: 75 rows (10 panels, the last partial) as 4+1 | 4+1; 63
  // as 4 | 4 with the partial panel in a group's upper half; 129 as 4+4 | 4+4+1; 100 as
  // 4+2+... | 4+2+1 (groups of four on VNNI, then pairs, then a single)
  const int64_t ns[] = {1, 7, 8, 9, 17, 40, 63, 75, 100, 129};
  const int64_t ks[] = {32, 96, 288, 512};
  // 5-8: with the interleaved copy, one pass of all tokens over each group of four panels on
  // VNNI (a step of continuous batching); 11 and 64: the prompt path (tiles of 4, a remainder
  // of 1, 2 or 3)
  const int64_t ms[] = {1, 2, 5, 6, 7, 8, 11, 64};
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t n : ns) {
      for (int64_t k : ks) {
        for (int64_t m : ms) {
          if (m == 64 && n * k > 17 * 288) continue;  // keep emulated runs short
          CAPTURE(n);
          CAPTURE(k);
          CAPTURE(m);
          const auto wf = test::gaussian(static_cast<size_t>(n * k), uint32_t(n * 1000 + k));
          const auto x = test::gaussian(static_cast<size_t>(m * k), uint32_t(m * 7 + k), 3.0f);
          std::vector<float> want(static_cast<size_t>(m * n));
          std::vector<block_q4_0> w4(static_cast<size_t>(n * k / 32));
          std::vector<block_q8_0> w8(static_cast<size_t>(n * k / 32));
          ref::quantize_row_q4_0(wf.data(), w4.data(), n * k);
          ref::quantize_row_q8_0(wf.data(), w8.data(), nullptr, n * k);
          // a value a file may hold though quantization never writes it: in the odd last panel
          // (n = 9: the 256-bit kernels), in a panel pair (n = 40: the zmm tiles for m >= 4) and
          // in the upper half of a group of four panels (n = 75, row 60: VNNI tiles for m >= 4)
          if (n == 9) w8[0].qs[3] = -128;
          if (n == 40) w8[std::size_t(3 * (k / 32))].qs[5] = -128;
          if (n == 75) w8[std::size_t(60 * (k / 32))].qs[17] = -128;

          std::vector<float> want8(want.size());
          ref::matmul(ggml_type::q4_0, w4.data(), n, k, x.data(), m, want.data());
          ref::matmul(ggml_type::q8_0, w8.data(), n, k, x.data(), m, want8.data());
          // with and without the token-interleaved copy (every table must accept it)
          for (bool il : {false, true}) {
            CAPTURE(il);
            auto got = run_qgemm<block_q4_0, kernels::block_q4_0x8>(*t, true, w4, n, k, x, m, il);
            CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
            got = run_qgemm<block_q8_0, kernels::block_q8_0x8>(*t, false, w8, n, k, x, m, il);
            CHECK(test::count_bit_differences(got.data(), want8.data(), want8.size()) == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("gemm Q4_K, Q5_K and Q6_K panels: every shape equals the reference bit for bit") {
  const int64_t ns[] = {1, 7, 8, 9, 17};
  const int64_t ks[] = {256, 768};
  const int64_t ms[] = {1, 3, 5, 6, 7, 8, 9};  // 5-8: one tile for the whole step
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t n : ns) {
      for (int64_t k : ks) {
        for (int64_t m : ms) {
          for (int extreme = 0; extreme < 2; ++extreme) {
            CAPTURE(n);
            CAPTURE(k);
            CAPTURE(m);
            CAPTURE(extreme);
            const auto wf = test::gaussian(static_cast<size_t>(n * k), uint32_t(n * 1000 + k));
            auto x = test::gaussian(static_cast<size_t>(m * k), uint32_t(m * 7 + k), 3.0f);
            if (extreme)  // activations of full magnitude: quants of +-127
              for (size_t i = 0; i < x.size(); ++i) x[i] = (i / 3) % 2 ? 1.0f : -1.0f;
            std::vector<float> want(static_cast<size_t>(m * n));
            std::vector<block_q4_k> w4(static_cast<size_t>(n * k / 256));
            std::vector<block_q5_k> w5(w4.size());
            std::vector<block_q6_k> w6(w4.size());
            if (extreme) {
              make_extreme(w4, uint32_t(n + k));
              make_extreme(w5, uint32_t(n + 2 * k));
              make_extreme(w6, uint32_t(n + 3 * k));
            } else {
              ref::quantize_row_q4_k(wf.data(), w4.data(), n * k);
              ref::quantize_row_q5_k(wf.data(), w5.data(), n * k);
              ref::quantize_row_q6_k(wf.data(), w6.data(), n * k);
            }
            ref::matmul(ggml_type::q4_k, w4.data(), n, k, x.data(), m, want.data());
            auto got = run_kgemm<block_q4_k, kernels::block_q4_kx8>(*t, w4, n, k, x, m);
            CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
            ref::matmul(ggml_type::q5_k, w5.data(), n, k, x.data(), m, want.data());
            got = run_kgemm<block_q5_k, kernels::block_q5_kx8>(*t, w5, n, k, x, m);
            CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
            ref::matmul(ggml_type::q6_k, w6.data(), n, k, x.data(), m, want.data());
            got = run_kgemm<block_q6_k, kernels::block_q6_kx8>(*t, w6, n, k, x, m);
            CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("k-quant panels hold exactly the GGUF super-blocks' quants and scales") {
  std::vector<block_q4_k> w4(9 * 2);
  std::vector<block_q5_k> w5(w4.size());
  std::vector<block_q6_k> w6(w4.size());
  make_extreme(w4, 1);
  make_extreme(w5, 2);
  make_extreme(w6, 3);
  std::vector<kernels::block_q4_kx8> p4(4);
  std::vector<kernels::block_q5_kx8> p5(4);
  std::vector<kernels::block_q6_kx8> p6(4);
  kernels::repack_q4_kx8(w4.data(), 9, 2, p4.data());
  kernels::repack_q5_kx8(w5.data(), 9, 2, p5.data());
  kernels::repack_q6_kx8(w6.data(), 9, 2, p6.data());
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t b = 0; b < 2; ++b) {
      uint8_t q[256], sc[8], mn[8], q2[256], sc2[8], mn2[8];
      int8_t s6[16], s62[16];
      const auto& P4 = p4[std::size_t((r / 8) * 2 + b)];
      ref::unpack_q4_k(w4[std::size_t(r * 2 + b)], q, sc, mn);
      kernels::unpack_panel_row(P4, int(r % 8), q2, sc2, mn2);
      CHECK(std::memcmp(q, q2, 256) == 0);
      CHECK(std::memcmp(sc, sc2, 8) == 0);
      CHECK(std::memcmp(mn, mn2, 8) == 0);
      ref::unpack_q5_k(w5[std::size_t(r * 2 + b)], q, sc, mn);
      kernels::unpack_panel_row(p5[std::size_t((r / 8) * 2 + b)], int(r % 8), q2, sc2, mn2);
      CHECK(std::memcmp(q, q2, 256) == 0);
      CHECK(std::memcmp(mn, mn2, 8) == 0);
      ref::unpack_q6_k(w6[std::size_t(r * 2 + b)], q, s6);
      kernels::unpack_panel_row(p6[std::size_t((r / 8) * 2 + b)], int(r % 8), q2, s62);
      CHECK(std::memcmp(q, q2, 256) == 0);
      CHECK(std::memcmp(s6, s62, 16) == 0);
    }
}

TEST_CASE("gemm with F16 and F32 weights equals the reference") {
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t k : {5, 8, 64, 100}) {
      const int64_t n = 11, m = 3;
      const auto wf = test::gaussian(static_cast<size_t>(n * k), uint32_t(k));
      const auto x = test::gaussian(static_cast<size_t>(m * k), uint32_t(k + 1));
      std::vector<uint16_t> wh(wf.size());
      for (size_t i = 0; i < wf.size(); ++i) wh[i] = fp32_to_fp16(wf[i]);
      std::vector<float> want(static_cast<size_t>(m * n)), got(static_cast<size_t>(m * n));
      ref::matmul(ggml_type::f16, wh.data(), n, k, x.data(), m, want.data());
      kernels::fgemm_args a{wh.data(), k, x.data(), m, got.data(), n};
      t->gemm_f16(a, 0, 4);
      t->gemm_f16(a, 4, n);
      CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
      ref::matmul(ggml_type::f32, wf.data(), n, k, x.data(), m, want.data());
      a.w = wf.data();
      t->gemm_f32(a, 0, n);
      CHECK(test::count_bit_differences(got.data(), want.data(), want.size()) == 0);
    }
  }
}

TEST_CASE("float operations equal the reference bit for bit") {
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t n : {1, 7, 8, 9, 64, 4096 + 5}) {
      CAPTURE(n);
      const auto a = test::gaussian(static_cast<size_t>(n), uint32_t(n), 4.0f);
      const auto b = test::gaussian(static_cast<size_t>(n), uint32_t(n + 1));
      std::vector<uint16_t> bh(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) bh[size_t(i)] = fp32_to_fp16(b[size_t(i)]);
      CHECK(test::same_bits(t->dot_f32(a.data(), b.data(), n), ref::dot_f32(a.data(), b.data(), n)));
      CHECK(test::same_bits(t->dot_f16_f32(bh.data(), a.data(), n),
                            ref::dot_f16_f32(bh.data(), a.data(), n)));
      std::vector<float> p(a), q(a);
      t->axpy_f32(p.data(), 0.37f, b.data(), n);
      ref::axpy_f32(q.data(), 0.37f, b.data(), n);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
      p = a, q = a;
      t->axpy_f16(p.data(), -1.5f, bh.data(), n);
      ref::axpy_f16(q.data(), -1.5f, bh.data(), n);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
      t->rmsnorm(p.data(), a.data(), b.data(), n, 1e-5f);
      ref::rmsnorm(q.data(), a.data(), b.data(), n, 1e-5f);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
      p = a, q = a;
      t->softmax(p.data(), n);
      ref::softmax(q.data(), n);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
      t->silu_mul(p.data(), a.data(), b.data(), n);
      ref::silu_mul(q.data(), a.data(), b.data(), n);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
      t->add(p.data(), a.data(), b.data(), n);
      ref::add(q.data(), a.data(), b.data(), n);
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
    }
    {  // to_f16: every rounding case fp32_to_fp16 handles, in the vector body and in the tail
      const float inf = std::numeric_limits<float>::infinity();
      std::vector<float> v = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e6f, inf, -inf,
                              std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::signaling_NaN(), std::bit_cast<float>(0x7f812345u),
                              std::bit_cast<float>(0xffc00001u), 5.96e-8f, 2.98e-8f, 2.99e-8f, 1e-10f, 6.1e-5f,
                              6.09e-5f, -3.0e-6f, std::numeric_limits<float>::denorm_min(), 1e-45f};
      for (uint32_t m : {0x1000u, 0x3000u, 0x0fffu, 0x1001u})  // ties to even and just past them
        for (uint32_t e : {0x38800000u, 0x3f800000u, 0x47000000u}) v.push_back(std::bit_cast<float>(e | m));
      for (uint32_t sh = 0; sh < 24; ++sh) v.push_back(std::bit_cast<float>(0x33000000u + (1u << sh)));  // subnormals
      const auto g = test::gaussian(101, 77, 1000.0f);
      v.insert(v.end(), g.begin(), g.end());
      for (uint32_t e = 0; e < 256; ++e)  // every exponent, both signs, a few mantissas (NaNs at 255)
        for (uint32_t m : {0u, 1u, 0x1000u, 0x2000u, 0x3000u, 0x400000u, 0x7fffffu})
          for (uint32_t s : {0u, 0x80000000u}) v.push_back(std::bit_cast<float>(s | e << 23 | m));
      std::vector<uint16_t> got(v.size(), 0xdead);
      t->to_f16(got.data(), v.data(), int64_t(v.size()));
      int wrong = 0;
      for (std::size_t i = 0; i < v.size(); ++i) wrong += got[i] != fp32_to_fp16(v[i]);
      CHECK(wrong == 0);
    }
    for (int64_t hd : {2, 6, 16, 128}) {
      const int64_t nh = 3;
      auto p = test::gaussian(static_cast<size_t>(nh * hd), uint32_t(hd));
      auto q = p;
      std::vector<float> c(static_cast<size_t>(hd)), s(static_cast<size_t>(hd));
      ref::rope_table(c.data(), s.data(), hd, hd, 1234.0, 10000.0);
      t->rope(p.data(), nh, hd, c.data(), s.data());
      ref::rope(q.data(), nh, hd, c.data(), s.data());
      CHECK(test::count_bit_differences(p.data(), q.data(), p.size()) == 0);
    }
  }
}

TEST_CASE("attention over cache rows equals the reference bit for bit") {
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    for (int64_t n : {6, 8, 64, 100, 128}) {
      for (int64_t rows : {1, 3, 4, 5, 9, 33}) {
        CAPTURE(n);
        CAPTURE(rows);
        const int64_t ld = n * 3 + 2;  // rows interleaved with other heads, as in the KV cache
        const auto kf = test::gaussian(static_cast<size_t>(ld * rows), uint32_t(n + rows));
        std::vector<uint16_t> kh(kf.size());
        for (size_t i = 0; i < kf.size(); ++i) kh[i] = fp32_to_fp16(kf[i]);
        const auto q = test::gaussian(static_cast<size_t>(n), uint32_t(n));
        const auto w = test::gaussian(static_cast<size_t>(rows), uint32_t(rows));
        std::vector<float> a(static_cast<size_t>(rows)), b(a);
        t->attn_scores_f16(kh.data() + 1, ld, rows, q.data(), n, 0.125f, a.data());
        ref::attn_scores_f16(kh.data() + 1, ld, rows, q.data(), n, 0.125f, b.data());
        CHECK(test::count_bit_differences(a.data(), b.data(), a.size()) == 0);
        t->attn_scores_f32(kf.data() + 1, ld, rows, q.data(), n, 0.125f, a.data());
        ref::attn_scores_f32(kf.data() + 1, ld, rows, q.data(), n, 0.125f, b.data());
        CHECK(test::count_bit_differences(a.data(), b.data(), a.size()) == 0);
        std::vector<float> y = test::gaussian(static_cast<size_t>(n), 99), z = y;
        t->attn_values_f16(y.data(), w.data(), kh.data() + 1, ld, rows, n);
        ref::attn_values_f16(z.data(), w.data(), kh.data() + 1, ld, rows, n);
        CHECK(test::count_bit_differences(y.data(), z.data(), y.size()) == 0);
        t->attn_values_f32(y.data(), w.data(), kf.data() + 1, ld, rows, n);
        ref::attn_values_f32(z.data(), w.data(), kf.data() + 1, ld, rows, n);
        CHECK(test::count_bit_differences(y.data(), z.data(), y.size()) == 0);
      }
    }
  }
}

TEST_CASE("softmax and silu survive extreme inputs") {
  for (auto* t : tables_under_test()) {
    const std::string table = t->name;
    CAPTURE(table);
    std::vector<float> x = {-1e30f, 0.0f, 1e30f, -100.0f, 100.0f, 3.0f, -3.0f, 88.5f, -88.5f};
    std::vector<float> y(x);
    t->softmax(y.data(), int64_t(y.size()));
    float s = 0;
    for (float v : y) {
      CHECK(std::isfinite(v));
      s += v;
    }
    CHECK(std::fabs(s - 1.0f) < 1e-5f);
    std::vector<float> ones(x.size(), 1.0f), out(x.size());
    t->silu_mul(out.data(), x.data(), ones.data(), int64_t(x.size()));
    CHECK(out[1] == 0.0f);
    CHECK(out[4] == doctest::Approx(100.0f));
    CHECK(std::fabs(out[3]) < 1e-30f);
  }
}
