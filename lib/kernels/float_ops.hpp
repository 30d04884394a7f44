// Float operations of the forward pass, written once over xsimd's batch<float, Arch>.
// Included only by arch translation units; everything here has internal linkage so that copies
// compiled with different ISA flags never merge. Every reduction follows the canonical order of
// reference.hpp (8 lanes, zero-padded tail, fixed tree), so results equal the reference bit for
// bit on every arch.
#pragma once
#include <xsimd/xsimd.hpp>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/kernel_table.hpp"
#include "qllm/formats.hpp"

namespace qllm::kernels {
namespace {

// Eight floats as one or more xsimd batches (8 lanes on AVX2, 2x4 on NEON).
// H provides `arch`, `static void cvt_f16(const uint16_t* src8, float* dst8)` and a correctly
// rounded `static batch div(batch, batch)`.
template <class H>
struct f8 {
  using B = xsimd::batch<float, typename H::arch>;
  static constexpr std::size_t w = B::size;
  static constexpr std::size_t nv = 8 / w;
  static_assert(nv * w == 8, "batch width must divide 8");
  B v[nv];

  static f8 load(const float* p) {
    f8 r;
    for (std::size_t i = 0; i < nv; ++i) r.v[i] = B::load_unaligned(p + i * w);
    return r;
  }
  static f8 load_tail(const float* p, int64_t n) {  // n < 8 elements, the rest zero
    alignas(64) float buf[8] = {};
    std::memcpy(buf, p, size_t(n) * sizeof(float));
    return load(buf);
  }
  static f8 load_f16(const uint16_t* p) {
    if constexpr (requires(const uint16_t* s, B* d) { H::cvt_f16_batches(s, d); }) {
      f8 r;  // straight into registers (a round trip through memory cost more than the math)
      H::cvt_f16_batches(p, r.v);
      return r;
    } else {
      alignas(64) float buf[8];
      H::cvt_f16(p, buf);
      return load(buf);
    }
  }
  static f8 load_f16_tail(const uint16_t* p, int64_t n) {
    uint16_t h[8] = {};
    std::memcpy(h, p, size_t(n) * sizeof(uint16_t));
    return load_f16(h);
  }
  static f8 splat(float x) {
    f8 r;
    for (auto& b : r.v) b = B(x);
    return r;
  }
  void store(float* p) const {
    for (std::size_t i = 0; i < nv; ++i) v[i].store_unaligned(p + i * w);
  }
  void store_tail(float* p, int64_t n) const {
    alignas(64) float buf[8];
    store(buf);
    std::memcpy(p, buf, size_t(n) * sizeof(float));
  }
  float sum() const {  // the canonical tree
    alignas(64) float l[8];
    store(l);
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
  }
  template <class Op>
  friend f8 map2(const f8& a, const f8& b, Op op) {
    f8 r;
    for (std::size_t i = 0; i < nv; ++i) r.v[i] = op(a.v[i], b.v[i]);
    return r;
  }
  friend f8 operator+(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return x + y; }); }
  friend f8 operator-(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return x - y; }); }
  friend f8 operator*(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return x * y; }); }
  // H::div: xsimd 8.1 divides on NEON by reciprocal estimate + Newton steps, not correctly rounded
  friend f8 operator/(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return H::div(x, y); }); }
  friend f8 fma8(const f8& a, const f8& b, const f8& c) {
    f8 r;
    for (std::size_t i = 0; i < nv; ++i) r.v[i] = xsimd::fma(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  friend f8 max8(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return xsimd::max(x, y); }); }
  friend f8 min8(const f8& a, const f8& b) { return map2(a, b, [](B x, B y) { return xsimd::min(x, y); }); }
};

// exp with the polynomial of ref::exp_canonical, operation for operation.
template <class H>
f8<H> exp8(f8<H> x) {
  using V = f8<H>;
  using B = typename V::B;
  using I = xsimd::batch<int32_t, typename H::arch>;
  x = min8(max8(x, V::splat(-87.0f)), V::splat(88.0f));
  V n;
  for (std::size_t i = 0; i < V::nv; ++i) n.v[i] = xsimd::nearbyint(x.v[i] * B(1.44269504088896341f));
  V r = fma8(n, V::splat(-0.693359375f), x);
  r = fma8(n, V::splat(2.12194440e-4f), r);
  V p = V::splat(1.9875691500e-4f);
  p = fma8(p, r, V::splat(1.3981999507e-3f));
  p = fma8(p, r, V::splat(8.3334519073e-3f));
  p = fma8(p, r, V::splat(4.1665795894e-2f));
  p = fma8(p, r, V::splat(1.6666665459e-1f));
  p = fma8(p, r, V::splat(5.0000001201e-1f));
  const V r2 = r * r;
  const V e = fma8(p, r2, r) + V::splat(1.0f);
  V scale;
  for (std::size_t i = 0; i < V::nv; ++i) {
    const I ni = xsimd::batch_cast<int32_t>(n.v[i]);
    scale.v[i] = xsimd::bitwise_cast<B>((ni + I(127)) << 23);
  }
  return e * scale;
}

template <class H>
float dot_f32(const float* a, const float* b, int64_t n) {
  using V = f8<H>;
  V acc = V::splat(0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = fma8(V::load(a + i), V::load(b + i), acc);
  if (i < n) acc = fma8(V::load_tail(a + i, n - i), V::load_tail(b + i, n - i), acc);
  return acc.sum();
}

template <class H>
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) {
  using V = f8<H>;
  V acc = V::splat(0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = fma8(V::load_f16(a + i), V::load(b + i), acc);
  if (i < n) acc = fma8(V::load_f16_tail(a + i, n - i), V::load_tail(b + i, n - i), acc);
  return acc.sum();
}

// Float-weight matmul: one canonical dot per (row, token). W is uint16_t (f16) or float.
template <class H, class W>
void gemm_float(const fgemm_args& a, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const W*>(a.w);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < a.m; ++t) {
      if constexpr (std::is_same_v<W, uint16_t>)
        a.y[t * a.ldy + r] = dot_f16_f32<H>(w + r * a.k, a.x + t * a.k, a.k);
      else
        a.y[t * a.ldy + r] = dot_f32<H>(w + r * a.k, a.x + t * a.k, a.k);
    }
  }
}

template <class H>
void axpy_f32(float* y, float a, const float* x, int64_t n) {
  using V = f8<H>;
  const V va = V::splat(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) fma8(va, V::load(x + i), V::load(y + i)).store(y + i);
  if (i < n) fma8(va, V::load_tail(x + i, n - i), V::load_tail(y + i, n - i)).store_tail(y + i, n - i);
}

template <class H>
void axpy_f16(float* y, float a, const uint16_t* x, int64_t n) {
  using V = f8<H>;
  const V va = V::splat(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) fma8(va, V::load_f16(x + i), V::load(y + i)).store(y + i);
  if (i < n)
    fma8(va, V::load_f16_tail(x + i, n - i), V::load_tail(y + i, n - i)).store_tail(y + i, n - i);
}

// Attention scores: four cache rows at a time (independent accumulators, each row in the
// canonical order of dot_f32 / dot_f16_f32, so the result equals one dot per row).
template <class H, class T>
void attn_scores(const T* k, int64_t ld, int64_t rows, const float* q, int64_t n, float scale,
                 float* out) {
  using V = f8<H>;
  auto load = [](const T* p) {
    if constexpr (std::is_same_v<T, uint16_t>) return V::load_f16(p);
    else return V::load(p);
  };
  auto load_tail = [](const T* p, int64_t c) {
    if constexpr (std::is_same_v<T, uint16_t>) return V::load_f16_tail(p, c);
    else return V::load_tail(p, c);
  };
  const int64_t full = n / 8 * 8;
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    V acc[4] = {V::splat(0.0f), V::splat(0.0f), V::splat(0.0f), V::splat(0.0f)};
    for (int64_t i = 0; i < full; i += 8) {
      const V qv = V::load(q + i);
      for (int r = 0; r < 4; ++r) acc[r] = fma8(load(k + (j + r) * ld + i), qv, acc[r]);
    }
    if (full < n) {
      const V qv = V::load_tail(q + full, n - full);
      for (int r = 0; r < 4; ++r) acc[r] = fma8(load_tail(k + (j + r) * ld + full, n - full), qv, acc[r]);
    }
    for (int r = 0; r < 4; ++r) out[j + r] = acc[r].sum() * scale;
  }
  for (; j < rows; ++j) {
    V acc = V::splat(0.0f);
    for (int64_t i = 0; i < full; i += 8) acc = fma8(load(k + j * ld + i), V::load(q + i), acc);
    if (full < n) acc = fma8(load_tail(k + j * ld + full, n - full), V::load_tail(q + full, n - full), acc);
    out[j] = acc.sum() * scale;
  }
}

// y += sum_j w[j] v[j]: 32 outputs stay in registers while every row streams past; per element
// the fma chain runs over j in order, as repeated axpy would.
template <class H, class T>
void attn_values(float* y, const float* w, const T* v, int64_t ld, int64_t rows, int64_t n) {
  using V = f8<H>;
  auto load = [](const T* p) {
    if constexpr (std::is_same_v<T, uint16_t>) return V::load_f16(p);
    else return V::load(p);
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    V acc[4];
    for (int c = 0; c < 4; ++c) acc[c] = V::load(y + i + 8 * c);
    for (int64_t j = 0; j < rows; ++j) {
      const V wj = V::splat(w[j]);
      for (int c = 0; c < 4; ++c) acc[c] = fma8(wj, load(v + j * ld + i + 8 * c), acc[c]);
    }
    for (int c = 0; c < 4; ++c) acc[c].store(y + i + 8 * c);
  }
  for (; i < n; i += 8) {
    const int64_t c = n - i < 8 ? n - i : 8;
    V acc = V::load_tail(y + i, c);
    for (int64_t j = 0; j < rows; ++j) {
      const V x = [&] {
        if constexpr (std::is_same_v<T, uint16_t>) return V::load_f16_tail(v + j * ld + i, c);
        else return V::load_tail(v + j * ld + i, c);
      }();
      acc = fma8(V::splat(w[j]), x, acc);
    }
    acc.store_tail(y + i, c);
  }
}

template <class H>
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  using V = f8<H>;
  const float ss = dot_f32<H>(x, x, n);
  const V scale = V::splat(1.0f / std::sqrt(ss / float(n) + eps));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) ((V::load(x + i) * scale) * V::load(w + i)).store(out + i);
  if (i < n)
    ((V::load_tail(x + i, n - i) * scale) * V::load_tail(w + i, n - i)).store_tail(out + i, n - i);
}

template <class H>
void softmax(float* x, int64_t n) {
  using V = f8<H>;
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = x[i] > max ? x[i] : max;
  const V vmax = V::splat(max);
  V acc = V::splat(0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const V e = exp8<H>(V::load(x + i) - vmax);
    e.store(x + i);
    acc = acc + e;
  }
  if (i < n) {
    alignas(64) float buf[8];
    exp8<H>(V::load_tail(x + i, n - i) - vmax).store(buf);
    for (int64_t j = n - i; j < 8; ++j) buf[j] = 0.0f;  // padded lanes add nothing
    const V e = V::load(buf);
    e.store_tail(x + i, n - i);
    acc = acc + e;
  }
  const V inv = V::splat(1.0f / acc.sum());
  for (i = 0; i + 8 <= n; i += 8) (V::load(x + i) * inv).store(x + i);
  if (i < n) (V::load_tail(x + i, n - i) * inv).store_tail(x + i, n - i);
}

template <class H>
void silu_mul(float* out, const float* gate, const float* up, int64_t n) {
  using V = f8<H>;
  const V one = V::splat(1.0f), zero = V::splat(0.0f);
  auto f = [&](const V& g, const V& u) { return (g / (one + exp8<H>(zero - g))) * u; };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f(V::load(gate + i), V::load(up + i)).store(out + i);
  if (i < n) f(V::load_tail(gate + i, n - i), V::load_tail(up + i, n - i)).store_tail(out + i, n - i);
}

template <class H>
void add(float* out, const float* a, const float* b, int64_t n) {
  using V = f8<H>;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) (V::load(a + i) + V::load(b + i)).store(out + i);
  if (i < n) (V::load_tail(a + i, n - i) + V::load_tail(b + i, n - i)).store_tail(out + i, n - i);
}

// H::store_f16(src8, dst8): eight floats to fp16 by the hardware conversion, round to nearest
// even (F16C vcvtps2ph, NEON fcvtn). Both keep a NaN's upper payload bits and set the quiet bit,
// as fp32_to_fp16 does: the same bits for every input (tested). Like every float operation in
// qllm this assumes the default floating-point environment (docs/capi.md): NEON's fcvtn takes
// its rounding from FPCR, and vcvtps2ph raises overflow / inexact flags (_MM_FROUND_NO_EXC does
// not suppress them in the VEX form), which trap only where a host has unmasked them.
template <class H>
void to_f16(uint16_t* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) H::store_f16(x + i, out + i);
  for (; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}

template <class H>
void rope(float* x, int64_t n_head, int64_t head_dim, const float* cos_dup, const float* sin_alt) {
  using V = f8<H>;
  using B = typename V::B;
  using U = xsimd::batch<uint32_t, typename H::arch>;
  auto swap_pairs = [](const V& a) {  // (x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...)
    V r;
    for (std::size_t i = 0; i < V::nv; ++i) {
      if constexpr (V::w == 8)
        r.v[i] = xsimd::swizzle(a.v[i], xsimd::batch_constant<U, 1, 0, 3, 2, 5, 4, 7, 6>());
      else
        r.v[i] = xsimd::swizzle(a.v[i], xsimd::batch_constant<U, 1, 0, 3, 2>());
    }
    return r;
  };
  static_assert(V::w == 8 || V::w == 4);
  for (int64_t h = 0; h < n_head; ++h) {
    float* v = x + h * head_dim;
    int64_t i = 0;
    for (; i + 8 <= head_dim; i += 8) {
      const V a = V::load(v + i);
      fma8(a, V::load(cos_dup + i), swap_pairs(a) * V::load(sin_alt + i)).store(v + i);
    }
    for (; i + 1 < head_dim; i += 2) {  // same formula as the vector lanes
      const float x0 = v[i], x1 = v[i + 1];
      v[i] = std::fma(x0, cos_dup[i], x1 * sin_alt[i]);
      v[i + 1] = std::fma(x1, cos_dup[i + 1], x0 * sin_alt[i + 1]);
    }
  }
  (void)sizeof(B);
}

}  // namespace
}  // namespace qllm::kernels
