// Fuzz target: the safetensors reader (qllm convert's input) on arbitrary bytes, through a memfd
// so the real open/mmap path runs. Every input opens or throws qllm::error; an opened file's
// tensors are in bounds and read back as f32.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  const int fd = memfd_create("fuzz_safetensors", MFD_CLOEXEC);
  if (fd < 0) return 0;
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) break;
    done += std::size_t(n);
  }
  try {
    const auto f = safetensors::file::open("/proc/self/fd/" + std::to_string(fd));
    uint64_t end = 0;
    for (const auto& t : f.tensors()) {
      if (t.begin < end || t.end < t.begin) __builtin_trap();  // validated: ordered, no overlap
      end = t.end;
      if (t.elements() > (1 << 20)) continue;
      std::vector<float> v(std::size_t(t.elements()));
      safetensors::to_f32(f, t, v.data());
      if (f.find(t.name) == nullptr) __builtin_trap();
    }
  } catch (const error&) {
  }
  ::close(fd);
  return 0;
}
