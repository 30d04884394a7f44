// Matmul orchestration: packing, activation quantization and OpenMP splitting. Results must not
// depend on the thread count, and must equal the reference.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "ops/matmul.hpp"
#include "ops/rows.hpp"
#include "qllm/formats.hpp"
#include "qllm/error.hpp"
#include "qllm/reference.hpp"
#include "test_util.hpp"

using namespace qllm;

TEST_CASE("matmul: bit-identical for 1, 2, 3 and 7 threads, equal to the reference") {
  for (auto* kt : kernels::runnable_tables()) {
    const std::string table = kt->name;
    CAPTURE(table);
    for (ggml_type type : {ggml_type::q4_0, ggml_type::q8_0, ggml_type::f16, ggml_type::f32}) {
      CAPTURE(int(type));
      for (int64_t m : {1, 5, 8, 130}) {  // 5 and 8: a step of continuous batching
        const int64_t n = 203, k = 320;
        CAPTURE(m);
        const auto wf = test::gaussian(static_cast<size_t>(n * k), 5);
        const auto x = test::gaussian(static_cast<size_t>(m * k), 6);
        std::vector<block_q4_0> w4(static_cast<size_t>(n * k / 32));
        std::vector<block_q8_0> w8(static_cast<size_t>(n * k / 32));
        std::vector<uint16_t> wh(static_cast<size_t>(n * k));
        ref::quantize_row_q4_0(wf.data(), w4.data(), n * k);
        ref::quantize_row_q8_0(wf.data(), w8.data(), nullptr, n * k);
        for (size_t i = 0; i < wh.size(); ++i) wh[i] = fp32_to_fp16(wf[i]);
        const void* src = type == ggml_type::q4_0   ? static_cast<const void*>(w4.data())
                          : type == ggml_type::q8_0 ? static_cast<const void*>(w8.data())
                          : type == ggml_type::f16  ? static_cast<const void*>(wh.data())
                                                    : static_cast<const void*>(wf.data());
        std::vector<float> want(static_cast<size_t>(m * n));
        ref::matmul(type, src, n, k, x.data(), m, want.data());
        const ops::packed_weights w(type, src, n, k, 2);
        ops::act_q8 xq(m, k);
        for (int nt : {1, 2, 3, 7}) {
          CAPTURE(nt);
          std::vector<float> y(static_cast<size_t>(m * n), 0.0f);
          ops::quantize_activations(*kt, x.data(), m, xq, nt);
          CHECK(xq.t_m == (m >= 5 && m <= 8 ? m : 0));  // the token-interleaved copy
          ops::matmul(*kt, w, x.data(), &xq, m, y.data(), n, nt);
          CHECK(test::count_bit_differences(y.data(), want.data(), want.size()) == 0);
          if (m == 8) {  // fewer tokens than were quantized: the copy is not theirs
            std::fill(y.begin(), y.end(), 0.0f);
            ops::matmul(*kt, w, x.data(), &xq, 6, y.data(), n, nt);
            CHECK(test::count_bit_differences(y.data(), want.data(), std::size_t(6 * n)) == 0);
          }
        }
      }
    }
  }
}

// Results are the same bits with or without the token-interleaved copy, so the tests above cannot
// see whether ops::matmul hands it over: a table whose Q4_0 GEMM records what it was given can.
namespace {
const kernels::kernel_table* g_inner = nullptr;
std::atomic<int> g_calls{0}, g_with_copy{0};
void spy_gemm_q4_0x8(const kernels::qgemm_args& a, int64_t p0, int64_t p1) {
  ++g_calls;
  if (a.xt_q && a.xt_sum && a.xt_d) ++g_with_copy;
  g_inner->gemm_q4_0x8(a, p0, p1);
}
}  // namespace

TEST_CASE("matmul hands a step of 5-8 tokens, and only those very tokens, the interleaved copy") {
  g_inner = &kernels::active();
  kernels::kernel_table spy = *g_inner;
  spy.gemm_q4_0x8 = spy_gemm_q4_0x8;
  const int64_t n = 203, k = 320, m_max = 130;  // an engine's act_q8 is sized for a whole batch
  const auto wf = test::gaussian(static_cast<size_t>(n * k), 5);
  const auto x = test::gaussian(static_cast<size_t>(m_max * k), 6);
  std::vector<block_q4_0> w4(static_cast<size_t>(n * k / 32));
  ref::quantize_row_q4_0(wf.data(), w4.data(), n * k);
  const ops::packed_weights w(ggml_type::q4_0, w4.data(), n, k, 2);
  ops::act_q8 xq(m_max, k);
  std::vector<float> y(static_cast<size_t>(m_max * n)), want(y.size());
  // (tokens quantized, tokens multiplied, whether the copy must be handed over)
  const struct {
    int64_t quantized, used;
    bool copy;
  } cases[] = {{6, 6, true}, {8, 8, true}, {5, 5, true}, {8, 6, false}, {4, 4, false}, {9, 9, false}, {130, 130, false}};
  for (const auto& c : cases) {
    CAPTURE(c.quantized);
    CAPTURE(c.used);
    g_calls = 0;
    g_with_copy = 0;
    ops::quantize_activations(spy, x.data(), c.quantized, xq, 2);
    ops::matmul(spy, w, x.data(), &xq, c.used, y.data(), n, 2);
    REQUIRE(g_calls > 0);
    CHECK(g_with_copy == (c.copy ? g_calls.load() : 0));
    ref::matmul(ggml_type::q4_0, w4.data(), n, k, x.data(), c.used, want.data());
    CHECK(test::count_bit_differences(y.data(), want.data(), std::size_t(c.used * n)) == 0);
  }
}

// quantize_activations writes only the forms asked for (a model of k-quants alone skips the Q8_0
// blocks), and matmul refuses activations that lack the form its weights read.
TEST_CASE("quantize_activations: the forms asked for, and matmul checks them") {
  const int64_t n = 24, k = 512;
  const auto wf = test::gaussian(static_cast<size_t>(n * k), 21);
  std::vector<block_q4_0> w4(static_cast<size_t>(n * k / 32));
  std::vector<block_q4_k> wk(static_cast<size_t>(n * k / 256));
  ref::quantize_row_q4_0(wf.data(), w4.data(), n * k);
  ref::quantize_row_q4_k(wf.data(), wk.data(), n * k);
  const ops::packed_weights W4(ggml_type::q4_0, w4.data(), n, k), WK(ggml_type::q4_k, wk.data(), n, k);
  CHECK(ops::act_form_for(ggml_type::q4_0) == ops::act_form_q8_0);
  CHECK(ops::act_form_for(ggml_type::q6_k) == ops::act_form_q8_k);
  CHECK(ops::act_form_for(ggml_type::f16) == 0u);
  for (auto* kt : kernels::runnable_tables()) {
    CAPTURE(std::string(kt->name));
    for (const int64_t m : {int64_t(1), int64_t(6)}) {
      CAPTURE(m);
      const auto x = test::gaussian(static_cast<size_t>(m * k), 22);
      std::vector<float> y(static_cast<size_t>(m * n)), want4(y.size()), wantk(y.size());
      ref::matmul(ggml_type::q4_0, w4.data(), n, k, x.data(), m, want4.data());
      ref::matmul(ggml_type::q4_k, wk.data(), n, k, x.data(), m, wantk.data());
      ops::act_q8 xq(8, k, true);
      const std::size_t q8_0_bytes = std::size_t(8 * k / 32) * sizeof(block_q8_0);
      const std::size_t q8_k_bytes = std::size_t(8 * k / 256) * sizeof(block_q8_k);
      std::memset(static_cast<void*>(xq.blocks.get()), 0x5a, q8_0_bytes);  // a form not asked
      std::memset(static_cast<void*>(xq.kblocks.get()), 0x5a, q8_k_bytes);  // for stays unwritten
      auto untouched = [](const void* p, std::size_t n) {
        const auto* b = static_cast<const unsigned char*>(p);
        return std::all_of(b, b + n, [](unsigned char c) { return c == 0x5a; });
      };
      ops::quantize_activations(*kt, x.data(), m, xq, 2, ops::act_form_q8_k);
      CHECK(xq.forms == ops::act_form_q8_k);
      CHECK(untouched(xq.blocks.get(), q8_0_bytes));
      CHECK(!untouched(xq.kblocks.get(), q8_k_bytes));
      CHECK(xq.t_m == 0);  // no Q8_0 blocks, no interleaved copy of them
      ops::matmul(*kt, WK, x.data(), &xq, m, y.data(), n, 2);
      CHECK(test::count_bit_differences(y.data(), wantk.data(), y.size()) == 0);
      CHECK_THROWS_AS(ops::matmul(*kt, W4, x.data(), &xq, m, y.data(), n, 2), error);
      std::memset(static_cast<void*>(xq.kblocks.get()), 0x5a, q8_k_bytes);
      ops::quantize_activations(*kt, x.data(), m, xq, 2, ops::act_form_q8_0);
      CHECK(xq.forms == ops::act_form_q8_0);
      CHECK(untouched(xq.kblocks.get(), q8_k_bytes));
      CHECK(!untouched(xq.blocks.get(), q8_0_bytes));
      CHECK(xq.t_m == (m == 6 ? 6 : 0));
      ops::matmul(*kt, W4, x.data(), &xq, m, y.data(), n, 2);
      CHECK(test::count_bit_differences(y.data(), want4.data(), y.size()) == 0);
      CHECK_THROWS_AS(ops::matmul(*kt, WK, x.data(), &xq, m, y.data(), n, 2), error);
      ops::quantize_activations(*kt, x.data(), m, xq, 2);  // both
      CHECK(xq.forms == ops::act_form_all);
      ops::matmul(*kt, WK, x.data(), &xq, m, y.data(), n, 2);
      CHECK(test::count_bit_differences(y.data(), wantk.data(), y.size()) == 0);
      ops::act_q8 plain(8, k);  // built without Q8_K: asking for it gives Q8_0 alone
      ops::quantize_activations(*kt, x.data(), m, plain, 2);
      CHECK(plain.forms == ops::act_form_q8_0);
      CHECK_THROWS_AS(ops::matmul(*kt, WK, x.data(), &plain, m, y.data(), n, 2), error);
    }
  }
}

TEST_CASE("packed_weights rejects what no kernel can read") {
  std::vector<block_q4_0> w(4);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q4_0, w.data(), 2, 48), error);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q2_k, w.data(), 2, 256), error);
  std::vector<block_q4_k> wk(4);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q4_k, wk.data(), 2, 128), error);  // not 256 k
  CHECK(ops::packed_weights(ggml_type::q6_k, wk.data(), 2, 256).bytes() == sizeof(kernels::block_q6_kx8));
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q8_0, w.data(), 0, 32), error);
  const ops::packed_weights ok(ggml_type::q4_0, w.data(), 2, 64);
  CHECK(ok.bytes() == 2 * sizeof(kernels::block_q4_0x8));  // one panel, two block columns
}

// ops::attention blocks queries and chunks cache rows; the result must equal one query at a time
// through the scalar reference, bit for bit, for every thread count.
TEST_CASE("attention: query blocks and row chunks give the reference's bits") {
  const auto& kt = kernels::active();
  const int64_t n_head = 4, n_head_kv = 2, n_ctx = 420;
  for (const int64_t hd : {int64_t(64), int64_t(128)}) {
    for (const bool f16 : {true, false}) {
      const auto kf = test::gaussian(std::size_t(n_head_kv * n_ctx * hd), 11);
      const auto vf = test::gaussian(kf.size(), 12);
      std::vector<uint16_t> kh(kf.size()), vh(vf.size());
      for (std::size_t i = 0; i < kf.size(); ++i) {
        kh[i] = fp32_to_fp16(kf[i]);
        vh[i] = fp32_to_fp16(vf[i]);
      }
      for (const int64_t pos0 : {int64_t(0), int64_t(137), int64_t(300)}) {
        for (const int64_t m : {int64_t(1), int64_t(5), int64_t(19)}) {
          CAPTURE(hd);
          CAPTURE(f16);
          CAPTURE(pos0);
          CAPTURE(m);
          const auto q = test::gaussian(std::size_t(m * n_head * hd), 13);
          // reference: one (token, head) at a time
          std::vector<float> want(q.size()), sc(static_cast<std::size_t>(n_ctx));
          const float scale = 1.0f / std::sqrt(float(hd));
          for (int64_t t = 0; t < m; ++t) {
            for (int64_t h = 0; h < n_head; ++h) {
              const int64_t kvh = h / (n_head / n_head_kv), n_keys = pos0 + t + 1;
              const std::size_t base = std::size_t(kvh * n_ctx * hd);
              const float* qt = &q[std::size_t((t * n_head + h) * hd)];
              float* out = &want[std::size_t((t * n_head + h) * hd)];
              if (f16) ref::attn_scores_f16(&kh[base], hd, n_keys, qt, hd, scale, sc.data());
              else ref::attn_scores_f32(&kf[base], hd, n_keys, qt, hd, scale, sc.data());
              ref::softmax(sc.data(), n_keys);
              if (f16) ref::attn_values_f16(out, sc.data(), &vh[base], hd, n_keys, hd);
              else ref::attn_values_f32(out, sc.data(), &vf[base], hd, n_keys, hd);
            }
          }
          for (int nt : {1, 2, 3}) {
            std::vector<float> got(q.size(), -1.0f), scratch(ops::attention_scratch_floats(nt, n_ctx));
            const void* k = f16 ? static_cast<const void*>(kh.data()) : kf.data();
            const void* v = f16 ? static_cast<const void*>(vh.data()) : vf.data();
            const ops::attention_args a{q.data(), k, v, f16, hd, n_ctx * hd, pos0, m, n_head, n_head_kv, hd,
                                        got.data(), scratch.data(), n_ctx};
            ops::attention(kt, a, nt);
            CHECK(test::count_bit_differences(got.data(), want.data(), got.size()) == 0);
          }
        }
      }
    }
  }
}
