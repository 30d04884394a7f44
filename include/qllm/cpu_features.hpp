// What this CPU and its OS can run: CPUID + XGETBV on x86, getauxval on aarch64.
#pragma once
#include <cstdint>
#include <string>

namespace qllm {

struct cpu_features {
  // x86 (each true only when the OS also saves the register state: XCR0)
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false;
  bool amd = false;  // CPUID vendor "AuthenticAMD" (tuning only, never what may run)
  unsigned family = 0;  // x86 family, base + extended (AMD Zen 3/4 0x19, Zen 5 0x1a; tuning only)
  // aarch64
  bool neon = false, dotprod = false, i8mm = false;
};

// Raw x86 register values the decision is made from.
struct x86_cpuid_regs {
  uint32_t max_leaf = 0;   // CPUID.0:EAX
  uint32_t leaf1_eax = 0;  // CPUID.1:EAX (stepping, model, family)
  uint32_t leaf1_ecx = 0;  // CPUID.1:ECX (FMA, OSXSAVE, AVX, F16C)
  uint32_t leaf7_ebx = 0;  // CPUID.(7,0):EBX (AVX2, AVX-512 F/DQ/BW/VL)
  uint32_t leaf7_ecx = 0;  // CPUID.(7,0):ECX (AVX512_VNNI)
  uint64_t xcr0 = 0;       // XGETBV(0), read only when OSXSAVE is set
  bool amd_vendor = false; // CPUID.0:EBX,EDX,ECX = "AuthenticAMD"
};

cpu_features cpu_features_from_x86(const x86_cpuid_regs& r) noexcept;
cpu_features cpu_features_from_aarch64(uint64_t hwcap, uint64_t hwcap2) noexcept;

// The features of the CPU in hand (computed once, cached).
const cpu_features& cpu_features_detect() noexcept;

// "avx2 fma f16c" style list of the features that are present.
std::string cpu_features_string(const cpu_features& f);

}  // namespace qllm
