// CPU feature detection. xsimd 8.1 reads CPUID only and would pick AVX-512 where the OS does not
// save ZMM state; qllm checks XCR0 as well.
#include "qllm/cpu_features.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace qllm {

cpu_features cpu_features_from_x86(const x86_cpuid_regs& r) noexcept {
  cpu_features f;
  f.amd = r.amd_vendor;
  const unsigned base_family = (r.leaf1_eax >> 8) & 0xfu;
  f.family = base_family == 0xfu ? base_family + ((r.leaf1_eax >> 20) & 0xffu) : base_family;
  const bool osxsave = (r.leaf1_ecx >> 27) & 1u;
  const bool avx = (r.leaf1_ecx >> 28) & 1u;
  const bool os_ymm = osxsave && (r.xcr0 & 0x6u) == 0x6u;      // SSE + AVX state
  const bool os_zmm = os_ymm && (r.xcr0 & 0xe0u) == 0xe0u;     // opmask + ZMM_Hi256 + Hi16_ZMM
  if (!avx || !os_ymm) return f;
  f.fma = (r.leaf1_ecx >> 12) & 1u;
  f.f16c = (r.leaf1_ecx >> 29) & 1u;
  if (r.max_leaf < 7) return f;
  f.avx2 = (r.leaf7_ebx >> 5) & 1u;
  if (!os_zmm) return f;
  f.avx512f = (r.leaf7_ebx >> 16) & 1u;
  f.avx512dq = f.avx512f && ((r.leaf7_ebx >> 17) & 1u);
  f.avx512bw = f.avx512f && ((r.leaf7_ebx >> 30) & 1u);
  f.avx512vl = f.avx512f && ((r.leaf7_ebx >> 31) & 1u);
  f.avx512_vnni = f.avx512f && ((r.leaf7_ecx >> 11) & 1u);
  return f;
}

cpu_features cpu_features_from_aarch64(uint64_t hwcap, uint64_t hwcap2) noexcept {
  cpu_features f;
  f.neon = (hwcap >> 1) & 1u;                 // HWCAP_ASIMD
  f.dotprod = f.neon && ((hwcap >> 20) & 1u);  // HWCAP_ASIMDDP
  f.i8mm = f.neon && ((hwcap2 >> 13) & 1u);    // HWCAP2_I8MM
  return f;
}

namespace {
cpu_features detect() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  x86_cpuid_regs r;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return {};
  r.max_leaf = a;
  r.amd_vendor = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "Auth" "enti" "cAMD"
  __get_cpuid(1, &a, &b, &c, &d);
  r.leaf1_eax = a;
  r.leaf1_ecx = c;
  if (r.max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    r.leaf7_ebx = b;
    r.leaf7_ecx = c;
  }
  if ((r.leaf1_ecx >> 27) & 1u) {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    r.xcr0 = (uint64_t(hi) << 32) | lo;
  }
  return cpu_features_from_x86(r);
#elif defined(__aarch64__) && defined(__linux__)
  return cpu_features_from_aarch64(getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
#elif defined(__aarch64__)
  cpu_features f;
  f.neon = true;
  return f;
#else
  return {};
#endif
}
}  // namespace

const cpu_features& cpu_features_detect() noexcept {
  static const cpu_features f = detect();
  return f;
}

std::string cpu_features_string(const cpu_features& f) {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  add(f.avx512_vnni, "avx512_vnni");
  add(f.neon, "neon");
  add(f.dotprod, "dotprod");
  add(f.i8mm, "i8mm");
  return s.empty() ? "none" : s;
}

}  // namespace qllm
