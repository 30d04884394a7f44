// CPU feature decisions from register values, and the live detection on this machine.
#include <doctest/doctest.h>

#include "qllm/cpu_features.hpp"

using namespace qllm;

namespace {
constexpr uint32_t fma_bit = 1u << 12, osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
constexpr uint32_t avx2 = 1u << 5, a512f = 1u << 16, a512dq = 1u << 17, a512bw = 1u << 30,
                   a512vl = 1u << 31, vnni = 1u << 11;
x86_cpuid_regs zen3() {
  x86_cpuid_regs r;
  r.max_leaf = 16;
  r.leaf1_ecx = fma_bit | osxsave | avx | f16c;
  r.leaf7_ebx = avx2;
  r.xcr0 = 0x7;
  r.amd_vendor = true;
  r.leaf1_eax = 0x00a00f11;  // EPYC 7003 (Milan): family 0xf + 0x0a, model 0x01
  return r;
}
x86_cpuid_regs icelake_server() {
  x86_cpuid_regs r = zen3();
  r.amd_vendor = false;
  r.leaf1_eax = 0x000606a6;  // Xeon 3rd gen (Ice Lake-SP): family 6, model 0x6a
  r.leaf7_ebx |= a512f | a512dq | a512bw | a512vl;
  r.leaf7_ecx = vnni;
  r.xcr0 = 0xe7;
  return r;
}
}  // namespace

TEST_CASE("x86: AVX2 machine without AVX-512") {
  const cpu_features f = cpu_features_from_x86(zen3());
  CHECK(f.avx2);
  CHECK(f.fma);
  CHECK(f.f16c);
  CHECK_FALSE(f.avx512f);
  CHECK_FALSE(f.avx512_vnni);
  CHECK(cpu_features_string(f) == "avx2 fma f16c");
  CHECK(f.amd);  // the vendor tunes (decode prefetch), it never decides what may run
  CHECK_FALSE(cpu_features_from_x86(icelake_server()).amd);
}

TEST_CASE("x86: family is the base family, plus the extended family where the base is 0xf") {
  CHECK(cpu_features_from_x86(zen3()).family == 0x19u);
  CHECK(cpu_features_from_x86(icelake_server()).family == 6u);
  x86_cpuid_regs r = zen3();
  r.leaf1_eax = 0x00a10f11;  // EPYC 9004 (Genoa, Zen 4): still family 0x19
  CHECK(cpu_features_from_x86(r).family == 0x19u);
  r.leaf1_eax = 0x00b00f21;  // EPYC 9005 (Turin, Zen 5): family 0x1a
  CHECK(cpu_features_from_x86(r).family == 0x1au);
  r.leaf1_eax = 0x0ff00f00;  // the largest extended family
  CHECK(cpu_features_from_x86(r).family == 0x10eu);
  r.leaf1_eax = 0x0ff00600;  // extended family bits count only under base family 0xf
  CHECK(cpu_features_from_x86(r).family == 6u);
  r.leaf1_eax = 0x00a00f11;
  r.leaf1_ecx = 0;  // no AVX: the family is read all the same
  CHECK(cpu_features_from_x86(r).family == 0x19u);
}

TEST_CASE("x86: AVX-512 with VNNI when the OS saves ZMM state") {
  const cpu_features f = cpu_features_from_x86(icelake_server());
  CHECK(f.avx512f);
  CHECK(f.avx512bw);
  CHECK(f.avx512vl);
  CHECK(f.avx512dq);
  CHECK(f.avx512_vnni);
}

TEST_CASE("x86: CPUID says AVX-512 but the OS disabled it (XCR0 lacks opmask/ZMM)") {
  x86_cpuid_regs r = icelake_server();
  r.xcr0 = 0x7;
  const cpu_features f = cpu_features_from_x86(r);
  CHECK(f.avx2);
  CHECK_FALSE(f.avx512f);
  CHECK_FALSE(f.avx512bw);
  CHECK_FALSE(f.avx512_vnni);
}

TEST_CASE("x86: no OSXSAVE or no YMM state means no AVX at all") {
  x86_cpuid_regs r = icelake_server();
  r.leaf1_ecx &= ~osxsave;
  CHECK(cpu_features_string(cpu_features_from_x86(r)) == "none");
  r = icelake_server();
  r.xcr0 = 0x3;  // SSE only
  CHECK_FALSE(cpu_features_from_x86(r).avx2);
  r = zen3();
  r.max_leaf = 1;  // leaf 7 absent: its registers are not trusted
  r.leaf7_ebx = avx2;
  CHECK_FALSE(cpu_features_from_x86(r).avx2);
  CHECK(cpu_features_from_x86(r).fma);
}

TEST_CASE("aarch64: hwcap bits") {
  const uint64_t asimd = 1u << 1, asimddp = 1u << 20, i8mm2 = 1u << 13;
  cpu_features f = cpu_features_from_aarch64(asimd | asimddp, i8mm2);
  CHECK(f.neon);
  CHECK(f.dotprod);
  CHECK(f.i8mm);
  f = cpu_features_from_aarch64(asimd, 0);
  CHECK(f.neon);
  CHECK_FALSE(f.dotprod);
  CHECK(cpu_features_string(cpu_features_from_aarch64(0, 0)) == "none");
}

TEST_CASE("live detection agrees with the compiler's runtime check") {
  const cpu_features& f = cpu_features_detect();
  MESSAGE("this CPU: " << cpu_features_string(f));
#if defined(__x86_64__)
  __builtin_cpu_init();
  CHECK(f.avx2 == bool(__builtin_cpu_supports("avx2")));
  CHECK(f.fma == bool(__builtin_cpu_supports("fma")));
  CHECK(f.avx512f == bool(__builtin_cpu_supports("avx512f")));
  CHECK(f.avx512bw == bool(__builtin_cpu_supports("avx512bw")));
  CHECK(f.amd == bool(__builtin_cpu_is("amd")));
  if (__builtin_cpu_is("amdfam19h")) CHECK(f.family == 0x19u);
  if (__builtin_cpu_is("intel")) CHECK((f.family == 6u || f.family == 15u));  // P6 line, or Pentium 4
#elif defined(__aarch64__)
  CHECK(f.neon);
#endif
}
