// Fuzz target: the GGUF reader on arbitrary bytes. Every input parses or throws qllm::error; a
// parsed file's values and tensor ranges are read back through every getter.
#include <cstddef>
#include <cstdint>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  try {
    const auto f = gguf::file::from_memory(data, size);
    for (const auto& [key, v] : f.metadata()) {
      try {  // every getter on every key: the right one answers, the others throw bad_format
        (void)f.get_string(key, "");
        (void)f.get_float(key, 0.0);
        (void)f.get_int(key, 0);
        (void)f.get_uint(key, 0);
        (void)f.get_bool(key, false);
        (void)v.array_size();
      } catch (const error&) {
      }
      for (int k = 0; k < 3; ++k) {
        try {
          if (k == 0) (void)f.get_array_string(key);
          if (k == 1) (void)f.get_array_float(key);
          if (k == 2) (void)f.get_array_int(key);
        } catch (const error&) {
        }
      }
    }
    volatile uint8_t sink = 0;
    for (const auto& t : f.tensors()) {
      const uint8_t* p = f.tensor_data(t);
      if (t.bytes) sink = sink ^ p[0] ^ p[t.bytes - 1];  // in bounds, or ASan says so
    }
  } catch (const error&) {
  }
  return 0;
}
