// The scalar table: plain loops over the panel layouts; float ops are the reference itself.
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/arch_exports.hpp"
#include "qllm/reference.hpp"

namespace qllm::kernels {
namespace {

void store_rows(const qgemm_args& a, int64_t t, int64_t p, const float* v) {
  for (int r = 0; r < 8 && p * 8 + r < a.n; ++r) a.y[t * a.ldy + p * 8 + r] = v[r];
}

void gemm_q4_0x8(const qgemm_args& a, int64_t p0, int64_t p1) {
  const auto* w = static_cast<const block_q4_0x8*>(a.w);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t t = 0; t < a.m; ++t) {
      float acc[8] = {};
      for (int64_t b = 0; b < a.nb; ++b) {
        const block_q4_0x8& wb = w[p * a.nb + b];
        const block_q8_0& xb = a.x[t * a.nb + b];
        const float dx = fp16_to_fp32(xb.d);
        for (int r = 0; r < 8; ++r) {
          int32_t s = 0;
          for (int c = 0; c < 4; ++c) {
            for (int i = 0; i < 4; ++i) {
              const uint8_t q = wb.qs[32 * c + 4 * r + i];
              s += ((q & 0x0f) - 8) * xb.qs[4 * c + i] + ((q >> 4) - 8) * xb.qs[16 + 4 * c + i];
            }
          }
          acc[r] = std::fma(float(s), fp16_to_fp32(wb.d[r]) * dx, acc[r]);
        }
      }
      store_rows(a, t, p, acc);
    }
  }
}

void gemm_q8_0x8(const qgemm_args& a, int64_t p0, int64_t p1) {
  const auto* w = static_cast<const block_q8_0x8*>(a.w);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t t = 0; t < a.m; ++t) {
      float acc[8] = {};
      for (int64_t b = 0; b < a.nb; ++b) {
        const block_q8_0x8& wb = w[p * a.nb + b];
        const block_q8_0& xb = a.x[t * a.nb + b];
        const float dx = fp16_to_fp32(xb.d);
        for (int r = 0; r < 8; ++r) {
          int32_t s = 0;
          for (int c = 0; c < 8; ++c)
            for (int i = 0; i < 4; ++i) s += wb.qs[32 * c + 4 * r + i] * xb.qs[4 * c + i];
          acc[r] = std::fma(float(s), fp16_to_fp32(wb.d[r]) * dx, acc[r]);
        }
      }
      store_rows(a, t, p, acc);
    }
  }
}

// K-quant panels: each row unpacked to element order, then the sums of ref::dot_q*_k_q8_k.
template <class Panel>
void gemm_kx8(const kgemm_args& a, int64_t p0, int64_t p1) {
  constexpr bool six = std::is_same_v<Panel, block_q6_kx8>;
  const auto* w = static_cast<const Panel*>(a.w);
  std::vector<float> acc;
  for (int64_t p = p0; p < p1; ++p) {
    acc.assign(std::size_t(a.m * 8), 0.0f);
    for (int64_t b = 0; b < a.nb; ++b) {
      const Panel& wb = w[p * a.nb + b];
      for (int r = 0; r < 8; ++r) {
        uint8_t q[256], sc[8], mn[8];
        int8_t sc6[16];
        if constexpr (six)
          unpack_panel_row(wb, r, q, sc6);
        else
          unpack_panel_row(wb, r, q, sc, mn);
        for (int64_t t = 0; t < a.m; ++t) {
          const block_q8_k& xb = a.x[t * a.nb + b];
          float& o = acc[std::size_t(t * 8 + r)];
          if constexpr (six) {
            int32_t sumi = 0;
            for (int g = 0; g < 16; ++g) {
              int32_t s = 0;
              for (int e = 0; e < 16; ++e) s += (q[16 * g + e] - 32) * xb.qs[16 * g + e];
              sumi += sc6[g] * s;
            }
            o = std::fma(float(sumi), fp16_to_fp32(wb.d[r]) * xb.d, o);
          } else {
            int32_t sumi = 0, summ = 0;
            for (int j = 0; j < 8; ++j) {
              int32_t s = 0;
              for (int e = 0; e < 32; ++e) s += q[32 * j + e] * xb.qs[32 * j + e];
              sumi += sc[j] * s;
              summ += mn[j] * (xb.bsums[2 * j] + xb.bsums[2 * j + 1]);
            }
            o = std::fma(float(sumi), fp16_to_fp32(wb.d[r]) * xb.d, o);
            o = std::fma(float(-summ), fp16_to_fp32(wb.dmin[r]) * xb.d, o);
          }
        }
      }
    }
    for (int64_t t = 0; t < a.m; ++t)
      for (int r = 0; r < 8 && p * 8 + r < a.n; ++r) a.y[t * a.ldy + p * 8 + r] = acc[std::size_t(t * 8 + r)];
  }
}

void to_f16(uint16_t* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}

void gemm_f16(const fgemm_args& a, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const uint16_t*>(a.w);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < a.m; ++t)
      a.y[t * a.ldy + r] = ref::dot_f16_f32(w + r * a.k, a.x + t * a.k, a.k);
}

void gemm_f32(const fgemm_args& a, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const float*>(a.w);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < a.m; ++t)
      a.y[t * a.ldy + r] = ref::dot_f32(w + r * a.k, a.x + t * a.k, a.k);
}

}  // namespace

extern constinit const kernel_table table_scalar = {
    "scalar",        supported_scalar,           ref::quantize_row_q8_0, ref::quantize_row_q8_k,
    gemm_q4_0x8,     gemm_q8_0x8,
    gemm_kx8<block_q4_kx8>, gemm_kx8<block_q5_kx8>, gemm_kx8<block_q6_kx8>,
    gemm_f16,        gemm_f32,         ref::dot_f32,           ref::dot_f16_f32, ref::axpy_f32,
    ref::axpy_f16,   ref::attn_scores_f16, ref::attn_scores_f32, ref::attn_values_f16,
    ref::attn_values_f32, ref::rmsnorm,     ref::softmax,           ref::silu_mul, ref::add,
    ref::rope,       to_f16,
};

}  // namespace qllm::kernels
