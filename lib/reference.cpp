// Scalar reference implementations (see reference.hpp for the canonical orders).
#include "qllm/reference.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

namespace qllm::ref {

void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t k) {
  for (int64_t b = 0; b < k / qk; ++b, x += qk) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;  // a denormal d: 1/d overflows, all quants 0
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < qk / 2; ++j) {
      const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int q1 = std::min(15, int(int8_t(x[j + qk / 2] * id + 8.5f)));
      y[b].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void dequantize_row_q4_0(const block_q4_0* x, float* y, int64_t k) {
  for (int64_t b = 0; b < k / qk; ++b, y += qk) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < qk / 2; ++j) {
      y[j] = float((x[b].qs[j] & 0x0f) - 8) * d;
      y[j + qk / 2] = float((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

namespace {

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

// Q4_1 (20 bytes / 32): d, m (f16), 16 bytes of nibbles; y = q*d + m. Element j of the block is
// the low nibble of byte j (j < 16) or the high nibble of byte j - 16.
// Q5_0 (22): d, qh (u32, bit j = 5th bit of element j), 16 bytes of nibbles; y = (q - 16)*d.
// Q5_1 (24): d, m, qh, nibbles; y = q*d + m.
void dequant_legacy(ggml_type t, const uint8_t* b, float* y) {
  const bool has_min = t != ggml_type::q5_0;
  const bool five = t != ggml_type::q4_1;
  const float d = half_at(b), m = has_min ? half_at(b + 2) : 0.0f;
  const uint8_t* p = b + (has_min ? 4 : 2);
  uint32_t qh = 0;
  if (five) {
    std::memcpy(&qh, p, 4);
    p += 4;
  }
  for (int j = 0; j < 16; ++j) {
    int lo = p[j] & 0x0f, hi = p[j] >> 4;
    if (five) {
      lo |= int((qh >> j) & 1) << 4;
      hi |= int((qh >> (j + 16)) & 1) << 4;
    }
    if (t == ggml_type::q5_0) {
      y[j] = float(lo - 16) * d;
      y[j + 16] = float(hi - 16) * d;
    } else {
      y[j] = float(lo) * d + m;
      y[j + 16] = float(hi) * d + m;
    }
  }
}

// The 6-bit scale and min of sub-block j (0..7) packed in Q4_K/Q5_K's 12 scale bytes: j < 4 in
// the low 6 bits of bytes j (scale) and j + 4 (min); j >= 4 in the nibbles of byte j + 4 with
// their top 2 bits in the high bits of bytes j - 4 (scale) and j (min).
void scale_min_k4(int j, const uint8_t* q, int& sc, int& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Super-blocks of 256 (docs/formats.md has the layouts).
void dequant_k(ggml_type t, const uint8_t* b, float* y) {
  switch (t) {
    case ggml_type::q2_k: {  // scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin
      const uint8_t* sc = b;
      const uint8_t* q = b + 16;
      const float d = half_at(b + 80), dmin = half_at(b + 82);
      int is = 0;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
          for (int half = 0; half < 2; ++half, ++is) {
            const float dl = d * float(sc[is] & 0x0f), ml = dmin * float(sc[is] >> 4);
            for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half] >> shift) & 3) - ml;
          }
      return;
    }
    case ggml_type::q3_k: {  // hmask[32], qs[64], scales[12] (16 six-bit values), d
      const uint8_t* hm = b;
      const uint8_t* q = b + 32;
      const uint8_t* s = b + 96;
      const float d = half_at(b + 108);
      int8_t scales[16];
      for (int j = 0; j < 16; ++j) {
        const int low = j < 8 ? s[j] & 0x0f : s[j - 8] >> 4;
        const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        scales[j] = int8_t((low | (high << 4)) - 32);
      }
      int is = 0;
      uint8_t m = 1;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m = uint8_t(m << 1))
          for (int half = 0; half < 2; ++half, ++is) {
            const float dl = d * float(scales[is]);
            for (int l = 0; l < 16; ++l) {
              const int i = l + 16 * half;
              *y++ = dl * float(((q[i] >> shift) & 3) - ((hm[i] & m) ? 0 : 4));
            }
          }
      return;
    }
    case ggml_type::q4_k:    // d, dmin, scales[12], qs[128]
    case ggml_type::q5_k: {  // d, dmin, scales[12], qh[32], qs[128]
      const float d = half_at(b), dmin = half_at(b + 2);
      const uint8_t* s = b + 4;
      const bool five = t == ggml_type::q5_k;
      const uint8_t* qh = b + 16;
      const uint8_t* q = b + (five ? 48 : 16);
      for (int j = 0, is = 0; j < 256; j += 64, q += 32, is += 2) {
        int sc1, m1, sc2, m2;
        scale_min_k4(is, s, sc1, m1);
        scale_min_k4(is + 1, s, sc2, m2);
        const float d1 = d * float(sc1), mm1 = dmin * float(m1), d2 = d * float(sc2), mm2 = dmin * float(m2);
        for (int l = 0; l < 32; ++l) {
          const int hb = five ? (qh[l] >> is) & 1 : 0;
          *y++ = d1 * float((q[l] & 0x0f) + 16 * hb) - mm1;
        }
        for (int l = 0; l < 32; ++l) {
          const int hb = five ? (qh[l] >> (is + 1)) & 1 : 0;
          *y++ = d2 * float((q[l] >> 4) + 16 * hb) - mm2;
        }
      }
      return;
    }
    case ggml_type::q6_k: {  // ql[128], qh[64], scales[16] (int8), d
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = half_at(b + 208);
      for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          y[l] = d * float(sc[is]) * float(q1);
          y[l + 32] = d * float(sc[is + 2]) * float(q2);
          y[l + 64] = d * float(sc[is + 4]) * float(q3);
          y[l + 96] = d * float(sc[is + 6]) * float(q4);
        }
      return;
    }
    default: return;
  }
}

}  // namespace

void dequantize_row(ggml_type type, const void* src, float* y, int64_t k) {
  const auto* p = static_cast<const uint8_t*>(src);
  switch (type) {
    case ggml_type::f32: std::memcpy(y, p, std::size_t(k) * 4); return;
    case ggml_type::f16:
    case ggml_type::bf16:
      for (int64_t i = 0; i < k; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = type == ggml_type::f16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
      }
      return;
    case ggml_type::q4_0: dequantize_row_q4_0(static_cast<const block_q4_0*>(src), y, k); return;
    case ggml_type::q8_0: dequantize_row_q8_0(static_cast<const block_q8_0*>(src), y, k); return;
    case ggml_type::q4_1:
    case ggml_type::q5_0:
    case ggml_type::q5_1: {
      const std::size_t bytes = type == ggml_type::q4_1 ? 20 : type == ggml_type::q5_0 ? 22 : 24;
      for (int64_t b = 0; b < k / 32; ++b) dequant_legacy(type, p + std::size_t(b) * bytes, y + b * 32);
      return;
    }
    case ggml_type::q2_k:
    case ggml_type::q3_k:
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k: {
      const std::size_t bytes = type == ggml_type::q2_k ? 84 : type == ggml_type::q3_k ? 110
                              : type == ggml_type::q4_k ? 144 : type == ggml_type::q5_k ? 176 : 210;
      for (int64_t b = 0; b < k / 256; ++b) dequant_k(type, p + std::size_t(b) * bytes, y + b * 256);
      return;
    }
    default: throw std::invalid_argument("dequantize_row: type without a reader");
  }
}

void quantize_row_q8_0(const float* x, block_q8_0* y, int32_t* sums, int64_t k) {
  for (int64_t b = 0; b < k / qk; ++b, x += qk) {
    bool finite = true;
    for (int j = 0; j < qk; ++j) finite = finite && std::isfinite(x[j]);
    if (!finite) {  // NaN scale, zero quants: the NaN propagates, no integer overflows
      y[b].d = fp16_nan_q8;
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      if (sums) sums[b] = 0;
      continue;
    }
    float amax = 0.0f;
    for (int j = 0; j < qk; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;  // a denormal d: 1/d overflows, all quants 0
    y[b].d = fp32_to_fp16(d);
    int32_t s = 0;
    for (int j = 0; j < qk; ++j) {
      y[b].qs[j] = int8_t(std::nearbyint(x[j] * id));
      s += y[b].qs[j];
    }
    if (sums) sums[b] = s;
  }
}

void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k) {
  for (int64_t b = 0; b < k / qk; ++b, y += qk) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < qk; ++j) y[j] = float(x[b].qs[j]) * d;
  }
}

int32_t dot_block_q4_0_q8_0(const block_q4_0& w, const block_q8_0& x) noexcept {
  int32_t s = 0;
  for (int j = 0; j < qk / 2; ++j) {
    s += ((w.qs[j] & 0x0f) - 8) * x.qs[j];
    s += ((w.qs[j] >> 4) - 8) * x.qs[j + qk / 2];
  }
  return s;
}

int32_t dot_block_q8_0_q8_0(const block_q8_0& w, const block_q8_0& x) noexcept {
  int32_t s = 0;
  for (int j = 0; j < qk; ++j) s += w.qs[j] * x.qs[j];
  return s;
}

float dot_q4_0_q8_0(const block_q4_0* w, const block_q8_0* x, int64_t nb) noexcept {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const float d = fp16_to_fp32(w[b].d) * fp16_to_fp32(x[b].d);
    acc = std::fma(float(dot_block_q4_0_q8_0(w[b], x[b])), d, acc);
  }
  return acc;
}

float dot_q8_0_q8_0(const block_q8_0* w, const block_q8_0* x, int64_t nb) noexcept {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const float d = fp16_to_fp32(w[b].d) * fp16_to_fp32(x[b].d);
    acc = std::fma(float(dot_block_q8_0_q8_0(w[b], x[b])), d, acc);
  }
  return acc;
}

float sum8(const float l[8]) noexcept {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

namespace {
// Canonical 8-lane fma reduction of f(i) * g(i) with a zero-padded tail.
template <class F, class G>
float lane_dot(int64_t n, F f, G g) noexcept {
  float acc[8] = {};
  for (int64_t i = 0; i < n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      const bool in = i + l < n;
      acc[l] = std::fma(in ? f(i + l) : 0.0f, in ? g(i + l) : 0.0f, acc[l]);
    }
  }
  return sum8(acc);
}
}  // namespace

float dot_f16_f32(const uint16_t* w, const float* x, int64_t n) noexcept {
  return lane_dot(n, [&](int64_t i) { return fp16_to_fp32(w[i]); }, [&](int64_t i) { return x[i]; });
}

float dot_f32(const float* w, const float* x, int64_t n) noexcept {
  return lane_dot(n, [&](int64_t i) { return w[i]; }, [&](int64_t i) { return x[i]; });
}

void matmul(ggml_type type, const void* w, int64_t n, int64_t k, const float* x, int64_t m,
            float* y) {
  const bool kq = type == ggml_type::q4_k || type == ggml_type::q5_k || type == ggml_type::q6_k;
  const bool quant = type == ggml_type::q4_0 || type == ggml_type::q8_0;
  if (!quant && !kq && type != ggml_type::f16 && type != ggml_type::f32)
    throw std::invalid_argument("ref::matmul: unsupported weight type");
  if (k <= 0 || (quant && k % qk != 0) || (kq && k % qk_k != 0))
    throw std::invalid_argument("ref::matmul: bad k");
  const int64_t nb = k / qk, nbk = k / qk_k;
  std::vector<block_q8_0> xq(quant ? size_t(nb) : 0);
  std::vector<block_q8_k> xk(kq ? size_t(nbk) : 0);
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * k;
    if (quant) quantize_row_q8_0(xt, xq.data(), nullptr, k);
    if (kq) quantize_row_q8_k(xt, xk.data(), k);
    for (int64_t r = 0; r < n; ++r) {
      float v = 0.0f;
      switch (type) {
        case ggml_type::q4_0:
          v = dot_q4_0_q8_0(static_cast<const block_q4_0*>(w) + r * nb, xq.data(), nb);
          break;
        case ggml_type::q8_0:
          v = dot_q8_0_q8_0(static_cast<const block_q8_0*>(w) + r * nb, xq.data(), nb);
          break;
        case ggml_type::q4_k:
          v = dot_q4_k_q8_k(static_cast<const block_q4_k*>(w) + r * nbk, xk.data(), nbk);
          break;
        case ggml_type::q5_k:
          v = dot_q5_k_q8_k(static_cast<const block_q5_k*>(w) + r * nbk, xk.data(), nbk);
          break;
        case ggml_type::q6_k:
          v = dot_q6_k_q8_k(static_cast<const block_q6_k*>(w) + r * nbk, xk.data(), nbk);
          break;
        case ggml_type::f16:
          v = dot_f16_f32(static_cast<const uint16_t*>(w) + r * k, xt, k);
          break;
        default:
          v = dot_f32(static_cast<const float*>(w) + r * k, xt, k);
          break;
      }
      y[t * n + r] = v;
    }
  }
}

float exp_canonical(float x) noexcept {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float r2 = r * r;
  float e = std::fma(p, r2, r) + 1.0f;
  const float scale = std::bit_cast<float>(uint32_t(int32_t(n) + 127) << 23);
  return e * scale;
}

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) noexcept {
  const float ss = lane_dot(n, [&](int64_t i) { return x[i]; }, [&](int64_t i) { return x[i]; });
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

void softmax(float* x, int64_t n) noexcept {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  float acc[8] = {};
  for (int64_t i = 0; i < n; ++i) {
    x[i] = exp_canonical(x[i] - max);
    acc[i % 8] += x[i];
  }
  const float inv = 1.0f / sum8(acc);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* out, const float* gate, const float* up, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + exp_canonical(-g))) * up[i];
  }
}

void add(float* out, const float* a, const float* b, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void axpy_f32(float* y, float a, const float* x, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

void axpy_f16(float* y, float a, const uint16_t* x, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(a, fp16_to_fp32(x[i]), y[i]);
}

void attn_scores_f16(const uint16_t* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                     float scale, float* out) noexcept {
  for (int64_t j = 0; j < rows; ++j) out[j] = dot_f16_f32(k + j * ld, q, n) * scale;
}

void attn_scores_f32(const float* k, int64_t ld, int64_t rows, const float* q, int64_t n,
                     float scale, float* out) noexcept {
  for (int64_t j = 0; j < rows; ++j) out[j] = dot_f32(k + j * ld, q, n) * scale;
}

void attn_values_f16(float* y, const float* w, const uint16_t* v, int64_t ld, int64_t rows,
                     int64_t n) noexcept {
  for (int64_t j = 0; j < rows; ++j) axpy_f16(y, w[j], v + j * ld, n);
}

void attn_values_f32(float* y, const float* w, const float* v, int64_t ld, int64_t rows,
                     int64_t n) noexcept {
  for (int64_t j = 0; j < rows; ++j) axpy_f32(y, w[j], v + j * ld, n);
}

void rope(float* x, int64_t n_head, int64_t head_dim, const float* cos_dup,
          const float* sin_alt) noexcept {
  for (int64_t h = 0; h < n_head; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i + 1 < head_dim; i += 2) {
      const float x0 = v[i], x1 = v[i + 1];
      v[i] = std::fma(x0, cos_dup[i], x1 * sin_alt[i]);
      v[i + 1] = std::fma(x1, cos_dup[i + 1], x0 * sin_alt[i + 1]);
    }
  }
}

void rope_table(float* cos_dup, float* sin_alt, int64_t head_dim, int64_t rot_dim, double pos,
                double freq_base, const float* freq_factors) noexcept {
  for (int64_t i = 0; i + 1 < head_dim; i += 2) {
    double c = 1.0, s = 0.0;
    if (i < rot_dim) {
      double theta = pos * std::pow(freq_base, -double(i) / double(rot_dim));
      if (freq_factors) theta /= double(freq_factors[i / 2]);
      c = std::cos(theta);
      s = std::sin(theta);
    }
    cos_dup[i] = cos_dup[i + 1] = float(c);
    sin_alt[i] = float(-s);
    sin_alt[i + 1] = float(s);
  }
}


// --- k-quants ---

namespace {

// Nearest integer of v in [lo, hi]; NaN counts as 0.
int round_clamp(float v, int lo, int hi) {
  if (!(v == v)) return 0;
  return int(std::clamp(std::nearbyint(v), float(lo), float(hi)));
}

float finite_or_zero(float v) { return std::isfinite(v) ? v : 0.0f; }

void pack_scale_min_k4(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12]) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] = uint8_t(out[j] | (sc[j] & 63));
      out[j + 4] = uint8_t(out[j + 4] | (mn[j] & 63));
    } else {
      out[j + 4] = uint8_t((sc[j] & 0x0f) | ((mn[j] & 0x0f) << 4));
      out[j - 4] = uint8_t(out[j - 4] | ((sc[j] >> 4) << 6));
      out[j] = uint8_t(out[j] | ((mn[j] >> 4) << 6));
    }
  }
}

// Q4_K / Q5_K quantization of one super-block: d, dmin, 6-bit scales and mins, quants 0..nmax.
void quantize_k_super(const float* x, int nmax, uint16_t& d16, uint16_t& dmin16, uint8_t sc[8],
                      uint8_t mn[8], uint8_t q[256]) {
  float scales[8], mins[8];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    float lo = 0.0f, hi = 0.0f;
    for (int e = 0; e < 32; ++e) {
      const float v = finite_or_zero(x[32 * j + e]);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    scales[j] = (hi - lo) / float(nmax);
    mins[j] = -lo;
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  d16 = fp32_to_fp16(max_scale / 63.0f);
  dmin16 = fp32_to_fp16(max_min / 63.0f);
  const float d = fp16_to_fp32(d16), dmin = fp16_to_fp32(dmin16);
  for (int j = 0; j < 8; ++j) {
    sc[j] = uint8_t(d > 0.0f ? round_clamp(scales[j] / d, 0, 63) : 0);
    mn[j] = uint8_t(dmin > 0.0f ? round_clamp(mins[j] / dmin, 0, 63) : 0);
    const float s = d * float(sc[j]), m = dmin * float(mn[j]);
    for (int e = 0; e < 32; ++e) {
      const float v = finite_or_zero(x[32 * j + e]);
      q[32 * j + e] = uint8_t(s > 0.0f ? round_clamp((v + m) / s, 0, nmax) : 0);
    }
  }
}

void unpack_k4_scales(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 8; ++j) {
    int a, b;
    scale_min_k4(j, s, a, b);
    sc[j] = uint8_t(a);
    mn[j] = uint8_t(b);
  }
}

}  // namespace

void quantize_row_q4_k(const float* x, block_q4_k* y, int64_t k) {
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    uint8_t sc[8], mn[8], q[256];
    quantize_k_super(x, 15, y[b].d, y[b].dmin, sc, mn, q);
    pack_scale_min_k4(sc, mn, y[b].scales);
    for (int i = 0; i < 4; ++i)
      for (int l = 0; l < 32; ++l) y[b].qs[32 * i + l] = uint8_t(q[64 * i + l] | (q[64 * i + 32 + l] << 4));
  }
}

void quantize_row_q5_k(const float* x, block_q5_k* y, int64_t k) {
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    uint8_t sc[8], mn[8], q[256];
    quantize_k_super(x, 31, y[b].d, y[b].dmin, sc, mn, q);
    pack_scale_min_k4(sc, mn, y[b].scales);
    std::memset(y[b].qh, 0, sizeof y[b].qh);
    for (int e = 0; e < 256; ++e) y[b].qh[e % 32] = uint8_t(y[b].qh[e % 32] | ((q[e] >> 4) << (e / 32)));
    for (int i = 0; i < 4; ++i)
      for (int l = 0; l < 32; ++l)
        y[b].qs[32 * i + l] = uint8_t((q[64 * i + l] & 0x0f) | ((q[64 * i + 32 + l] & 0x0f) << 4));
  }
}

void quantize_row_q6_k(const float* x, block_q6_k* y, int64_t k) {
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    float scales[16];
    float amax_scale = 0.0f;
    for (int g = 0; g < 16; ++g) {
      float amax = 0.0f, max = 0.0f;
      for (int e = 0; e < 16; ++e) {
        const float v = finite_or_zero(x[16 * g + e]);
        if (std::fabs(v) > amax) {
          amax = std::fabs(v);
          max = v;
        }
      }
      scales[g] = max / -32.0f;
      amax_scale = std::max(amax_scale, std::fabs(scales[g]));
    }
    y[b].d = fp32_to_fp16(amax_scale / 127.0f);
    const float d = fp16_to_fp32(y[b].d);
    uint8_t q[256];
    for (int g = 0; g < 16; ++g) {
      y[b].scales[g] = int8_t(d > 0.0f ? round_clamp(scales[g] / d, -127, 127) : 0);
      const float s = d * float(y[b].scales[g]);
      for (int e = 0; e < 16; ++e) {
        const float v = finite_or_zero(x[16 * g + e]);
        q[16 * g + e] = uint8_t((s != 0.0f ? round_clamp(v / s, -32, 31) : 0) + 32);
      }
    }
    std::memset(y[b].ql, 0, sizeof y[b].ql);
    std::memset(y[b].qh, 0, sizeof y[b].qh);
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, w = e % 128, s = w / 32, l = w % 32;
      uint8_t& lo = y[b].ql[64 * h + l + (s & 1 ? 32 : 0)];
      lo = uint8_t(lo | ((q[e] & 0x0f) << (s >= 2 ? 4 : 0)));
      y[b].qh[32 * h + l] = uint8_t(y[b].qh[32 * h + l] | ((q[e] >> 4) << (2 * s)));
    }
  }
}

void quantize_row_q8_k(const float* x, block_q8_k* y, int64_t k) {
  for (int64_t b = 0; b < k / qk_k; ++b, x += qk_k) {
    bool finite = true;
    float amax = 0.0f;
    for (int j = 0; j < qk_k; ++j) {
      finite = finite && std::isfinite(x[j]);
      amax = std::max(amax, std::fabs(x[j]));
    }
    std::memset(y[b].bsums, 0, sizeof y[b].bsums);
    if (!finite) {
      y[b].d = std::numeric_limits<float>::quiet_NaN();
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      continue;
    }
    const float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(std::fabs(id) <= 3.40282347e38f)) id = 0.0f;  // a denormal d: 1/d overflows, all quants 0
    y[b].d = d;
    for (int j = 0; j < qk_k; ++j) {
      y[b].qs[j] = int8_t(std::nearbyint(x[j] * id));
      y[b].bsums[j / 16] = int16_t(y[b].bsums[j / 16] + y[b].qs[j]);
    }
  }
}

void unpack_q4_k(const block_q4_k& b, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept {
  unpack_k4_scales(b.scales, sc, mn);
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < 32; ++l) {
      q[64 * i + l] = b.qs[32 * i + l] & 0x0f;
      q[64 * i + 32 + l] = b.qs[32 * i + l] >> 4;
    }
}

void unpack_q5_k(const block_q5_k& b, uint8_t q[256], uint8_t sc[8], uint8_t mn[8]) noexcept {
  unpack_k4_scales(b.scales, sc, mn);
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < 32; ++l) {
      q[64 * i + l] = uint8_t((b.qs[32 * i + l] & 0x0f) | (((b.qh[l] >> (2 * i)) & 1) << 4));
      q[64 * i + 32 + l] = uint8_t((b.qs[32 * i + l] >> 4) | (((b.qh[l] >> (2 * i + 1)) & 1) << 4));
    }
}

void unpack_q6_k(const block_q6_k& b, uint8_t q[256], int8_t sc[16]) noexcept {
  std::memcpy(sc, b.scales, 16);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, w = e % 128, s = w / 32, l = w % 32;
    const uint8_t lo = b.ql[64 * h + l + (s & 1 ? 32 : 0)];
    q[e] = uint8_t(((s >= 2 ? lo >> 4 : lo) & 0x0f) | (((b.qh[32 * h + l] >> (2 * s)) & 3) << 4));
  }
}

namespace {

template <class Block, void (*Unpack)(const Block&, uint8_t*, uint8_t*, uint8_t*) noexcept>
float dot_k4(const Block* w, const block_q8_k* x, int64_t nb) noexcept {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t q[256], sc[8], mn[8];
    Unpack(w[b], q, sc, mn);
    int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      int32_t s = 0;
      for (int e = 0; e < 32; ++e) s += q[32 * j + e] * x[b].qs[32 * j + e];
      sumi += sc[j] * s;
      summ += mn[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
    }
    acc = std::fma(float(sumi), fp16_to_fp32(w[b].d) * x[b].d, acc);
    acc = std::fma(float(-summ), fp16_to_fp32(w[b].dmin) * x[b].d, acc);
  }
  return acc;
}

}  // namespace

float dot_q4_k_q8_k(const block_q4_k* w, const block_q8_k* x, int64_t nb) noexcept {
  return dot_k4<block_q4_k, unpack_q4_k>(w, x, nb);
}

float dot_q5_k_q8_k(const block_q5_k* w, const block_q8_k* x, int64_t nb) noexcept {
  return dot_k4<block_q5_k, unpack_q5_k>(w, x, nb);
}

float dot_q6_k_q8_k(const block_q6_k* w, const block_q8_k* x, int64_t nb) noexcept {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t q[256];
    int8_t sc[16];
    unpack_q6_k(w[b], q, sc);
    int32_t sumi = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t s = 0;
      for (int e = 0; e < 16; ++e) s += (q[16 * g + e] - 32) * x[b].qs[16 * g + e];
      sumi += sc[g] * s;
    }
    acc = std::fma(float(sumi), fp16_to_fp32(w[b].d) * x[b].d, acc);
  }
  return acc;
}

}  // namespace qllm::ref
