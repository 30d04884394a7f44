// Matmul orchestration: packing, activation quantization and OpenMP splitting. Results must not
// depend on the thread count, and must equal the reference.
#include <doctest/doctest.h>

#include <string>

#include "ops/matmul.hpp"
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
      for (int64_t m : {1, 5, 130}) {
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
          ops::matmul(*kt, w, x.data(), &xq, m, y.data(), n, nt);
          CHECK(test::count_bit_differences(y.data(), want.data(), want.size()) == 0);
        }
      }
    }
  }
}

TEST_CASE("packed_weights rejects what no kernel can read") {
  std::vector<block_q4_0> w(4);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q4_0, w.data(), 2, 48), error);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q4_k, w.data(), 2, 256), error);
  CHECK_THROWS_AS(ops::packed_weights(ggml_type::q8_0, w.data(), 0, 32), error);
  const ops::packed_weights ok(ggml_type::q4_0, w.data(), 2, 64);
  CHECK(ok.bytes() == 2 * sizeof(kernels::block_q4_0x8));  // one panel, two block columns
}
