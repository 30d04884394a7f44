#include "omp_compat.hpp"
#include "ops/matmul.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <string>

#include "qllm/error.hpp"
#include "qllm/reference.hpp"

namespace qllm::ops {

void packed_weights::aligned_free::operator()(void* p) const noexcept { std::free(p); }

std::size_t packed_weights::packed_size(ggml_type type, int64_t n, int64_t k) noexcept {
  if (!repacked(type) || n <= 0 || k <= 0) return 0;
  std::size_t panel = 0;
  switch (type) {
    case ggml_type::q4_0: panel = sizeof(kernels::block_q4_0x8); break;
    case ggml_type::q8_0: panel = sizeof(kernels::block_q8_0x8); break;
    case ggml_type::q4_k: panel = sizeof(kernels::block_q4_kx8); break;
    case ggml_type::q5_k: panel = sizeof(kernels::block_q5_kx8); break;
    default: panel = sizeof(kernels::block_q6_kx8); break;
  }
  return std::size_t((n + 7) / 8) * std::size_t(k / (k_quant(type) ? qk_k : qk)) * panel;
}

packed_weights::packed_weights(ggml_type type, const void* src, int64_t n, int64_t k,
                               int n_threads, void* dst)
    : type_(type), n_(n), k_(k) {
  if (n <= 0 || k <= 0) throw error(errc::invalid_argument, "packed_weights: empty matrix");
  const int64_t np = (n + 7) / 8;
  const int64_t nb = k / qk;
  switch (type) {
    case ggml_type::q4_0:
    case ggml_type::q8_0:
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k: {
      const int64_t block = k_quant(type) ? qk_k : qk;
      if (k % block != 0)
        throw error(errc::invalid_argument, "packed_weights: row length " + std::to_string(k) +
                                                " is not a multiple of " + std::to_string(block));
      bytes_ = packed_size(type, n, k);
      void* p = dst;
      if (!p) {
        // large matrices on 2 MiB pages (as the model's arena): fewer TLB misses while streaming
        const std::size_t huge = std::size_t(2) << 20;
        const std::size_t align = bytes_ >= 2 * huge ? huge : 64;
        const std::size_t alloc = (bytes_ + align - 1) / align * align;
        p = std::aligned_alloc(align, alloc);
        if (p && align == huge) madvise(p, alloc, MADV_HUGEPAGE);  // advice only
        if (!p)
          throw error(errc::out_of_memory,
                      "packed_weights: cannot allocate " + std::to_string(alloc) + " bytes");
        own_.reset(p);
      }
      data_ = p;
      // each panel is independent: repack in parallel
      int64_t bad = 0;  // panels with an infinite or NaN scale
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads)) reduction(+ : bad)
      for (int64_t pp = 0; pp < np; ++pp) {
        const int64_t rows = std::min<int64_t>(8, n - pp * 8);
        const int64_t nbk = k / qk_k;
        bool ok = true;
        switch (type) {
          case ggml_type::q4_0:
            ok = kernels::repack_q4_0x8(static_cast<const block_q4_0*>(src) + pp * 8 * nb, rows, nb,
                                        static_cast<kernels::block_q4_0x8*>(p) + pp * nb);
            break;
          case ggml_type::q8_0:
            ok = kernels::repack_q8_0x8(static_cast<const block_q8_0*>(src) + pp * 8 * nb, rows, nb,
                                        static_cast<kernels::block_q8_0x8*>(p) + pp * nb);
            break;
          case ggml_type::q4_k:
            ok = kernels::repack_q4_kx8(static_cast<const block_q4_k*>(src) + pp * 8 * nbk, rows, nbk,
                                        static_cast<kernels::block_q4_kx8*>(p) + pp * nbk);
            break;
          case ggml_type::q5_k:
            ok = kernels::repack_q5_kx8(static_cast<const block_q5_k*>(src) + pp * 8 * nbk, rows, nbk,
                                        static_cast<kernels::block_q5_kx8*>(p) + pp * nbk);
            break;
          default:
            ok = kernels::repack_q6_kx8(static_cast<const block_q6_k*>(src) + pp * 8 * nbk, rows, nbk,
                                        static_cast<kernels::block_q6_kx8*>(p) + pp * nbk);
            break;
        }
        bad += !ok;
      }
      if (bad)
        throw error(errc::bad_format, "a block scale is infinite or NaN (in " + std::to_string(bad) + " of " +
                                          std::to_string(np) + " groups of 8 rows)");
      break;
    }
    case ggml_type::f16:
      data_ = src;
      bytes_ = std::size_t(n) * std::size_t(k) * 2;
      break;
    case ggml_type::f32:
      data_ = src;
      bytes_ = std::size_t(n) * std::size_t(k) * 4;
      break;
    default:
      throw error(errc::unsupported,
                  "packed_weights: weight type " + std::to_string(int(type)) + " has no kernel");
  }
}

packed_weights packed_weights::view(ggml_type type, int64_t n, int64_t k, const void* packed) {
  const int64_t block = k_quant(type) ? qk_k : qk;
  if (!repacked(type) || n <= 0 || k <= 0 || k % block != 0 || !packed ||
      reinterpret_cast<uintptr_t>(packed) % 64 != 0)
    throw error(errc::invalid_argument, "packed_weights::view: not a repacked matrix of this shape");
  packed_weights w;
  w.type_ = type;
  w.n_ = n;
  w.k_ = k;
  w.data_ = packed;
  w.bytes_ = packed_size(type, n, k);
  return w;
}

act_q8::act_q8(int64_t m_max_, int64_t k_, bool k_quants)
    : blocks(new block_q8_0[std::size_t(m_max_ * (k_ / qk))]),
      sums(new int32_t[std::size_t(m_max_ * (k_ / qk))]),
      scales(new float[std::size_t(m_max_ * (k_ / qk))]),
      kblocks(k_quants && k_ % qk_k == 0 ? new block_q8_k[std::size_t(m_max_ * (k_ / qk_k))] : nullptr),
      m_max(m_max_),
      k(k_) {
  if (m_max >= 5) {
    const std::size_t n = std::size_t(std::min(m_max, kernels::kmax_interleaved) * (k / qk));
    t_q.reset(new int8_t[32 * n]);
    t_sum.reset(new int32_t[n]);
    t_d.reset(new float[n]);
  }
}

void quantize_activations(const kernels::kernel_table& kt, const float* x, int64_t m, act_q8& a,
                          int n_threads, unsigned forms) {
  const int64_t nb = a.k / qk;
  const bool q8_0 = forms & act_form_q8_0, q8_k = (forms & act_form_q8_k) && a.kblocks;
  a.forms = (q8_0 ? act_form_q8_0 : 0u) | (q8_k ? act_form_q8_k : 0u);
  a.t_m = q8_0 && m >= 5 && m <= kernels::kmax_interleaved && a.t_q ? m : 0;
#pragma omp parallel num_threads(std::max(1, n_threads)) if (m > 1)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m; ++t) {
      if (q8_0) {
        kt.quantize_row_q8_0(x + t * a.k, a.blocks.get() + t * nb, a.sums.get() + t * nb, a.k);
        for (int64_t b = 0; b < nb; ++b) a.scales[t * nb + b] = fp16_to_fp32(a.blocks[t * nb + b].d);
      }
      if (q8_k) kt.quantize_row_q8_k(x + t * a.k, a.kblocks.get() + t * (a.k / qk_k), a.k);
    }
    // after the loop's barrier: every token's blocks are there; the threads share the copy
    // (serial, it was 0.6 % of a step of 8 streams on 2 cores, and more of a shorter step on more)
    if (a.t_m) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < nb; ++b)
        kernels::interleave_tokens(a.blocks.get(), a.sums.get(), a.scales.get(), m, nb, b, b + 1, a.t_q.get(),
                                   a.t_sum.get(), a.t_d.get());
    }
  }
}

void matmul(const kernels::kernel_table& kt, const packed_weights& w, const float* x,
            const act_q8* xq, int64_t m, float* y, int64_t ldy, int n_threads) {
  const int nt = std::max(1, n_threads);
  const bool quant = packed_weights::repacked(w.type());
  const bool kq = packed_weights::k_quant(w.type());
  if (kq && (!xq || !xq->kblocks || !(xq->forms & act_form_q8_k)))
    throw error(errc::invalid_argument, "matmul: k-quant weights need Q8_K activations");
  if (quant && !kq && (!xq || !(xq->forms & act_form_q8_0)))
    throw error(errc::invalid_argument, "matmul: Q4_0/Q8_0 weights need Q8_0 activations");
  // Units of work: panels (8 rows) for quantized weights, rows for float weights.
  const int64_t units = quant ? (w.rows() + 7) / 8 : w.rows();
  // Token blocks keep a block of activations in L2 while a chunk of panels sweeps over it.
  const int64_t tb = m <= 8 ? m : 64;
  const int64_t n_tb = (m + tb - 1) / tb;
  const int64_t chunk =
      m <= 8 ? std::max<int64_t>(1, (units + nt - 1) / nt) : std::max<int64_t>(1, quant ? 8 : 32);
  const int64_t n_chunks = (units + chunk - 1) / chunk;
  const int64_t items = n_tb * n_chunks;

#pragma omp parallel for schedule(static) num_threads(nt) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t ti = it / n_chunks, ci = it % n_chunks;
    const int64_t t0 = ti * tb, tn = std::min(tb, m - t0);
    const int64_t u0 = ci * chunk, u1 = std::min(units, u0 + chunk);
    if (kq) {
      const int64_t nb = w.cols() / qk_k;
      const kernels::kgemm_args a{w.data(), nb, w.rows(), xq->kblocks.get() + t0 * nb, tn, y + t0 * ldy, ldy};
      if (w.type() == ggml_type::q4_k)
        kt.gemm_q4_kx8(a, u0, u1);
      else if (w.type() == ggml_type::q5_k)
        kt.gemm_q5_kx8(a, u0, u1);
      else
        kt.gemm_q6_kx8(a, u0, u1);
    } else if (quant) {
      const int64_t nb = w.cols() / qk;
      kernels::qgemm_args a{w.data(), nb, w.rows(), xq->blocks.get() + t0 * nb,
                            xq->sums.get() + t0 * nb, xq->scales.get() + t0 * nb, tn, y + t0 * ldy, ldy};
      if (xq->t_m == tn && t0 == 0) {  // the interleaved copy of these very tokens
        a.xt_q = xq->t_q.get();
        a.xt_sum = xq->t_sum.get();
        a.xt_d = xq->t_d.get();
      }
      if (w.type() == ggml_type::q4_0)
        kt.gemm_q4_0x8(a, u0, u1);
      else
        kt.gemm_q8_0x8(a, u0, u1);
    } else {
      const kernels::fgemm_args a{w.data(), w.cols(), x + t0 * w.cols(), tn, y + t0 * ldy, ldy};
      if (w.type() == ggml_type::f16)
        kt.gemm_f16(a, u0, u1);
      else
        kt.gemm_f32(a, u0, u1);
    }
  }
}

}  // namespace qllm::ops
