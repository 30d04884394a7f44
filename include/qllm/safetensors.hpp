// safetensors files (Hugging Face checkpoints): a validated, memory-mapped reader and a writer.
// Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets},
// "__metadata__": {...}}, then the data buffer, which the tensors tile exactly (no holes, no overlap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace qllm::safetensors {

enum class dtype { f32, f16, bf16 };  // the element types qllm reads

struct tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;  // row-major, as in PyTorch: shape.back() is the contiguous axis
  uint64_t begin = 0, end = 0;  // byte range in the data buffer
  int64_t elements() const noexcept;
};

const char* dtype_name(dtype t) noexcept;  // "F32", "F16", "BF16"
std::size_t dtype_bytes(dtype t) noexcept;

// The header may be at most this large (a 7B checkpoint's is about 30 KB).
inline constexpr uint64_t max_header_bytes = uint64_t(100) << 20;

class file {
 public:
  // Maps `path` and validates the header: JSON object, every entry with a dtype, a shape of
  // non-negative dims whose element count times the dtype size equals its data_offsets range, the
  // ranges tiling the data buffer. Throws qllm::error: io (cannot open/map), bad_format (naming the
  // file and the tensor or field), unsupported (a dtype other than F32/F16/BF16, naming it).
  static file open(const std::string& path);
  file(file&&) noexcept;
  file& operator=(file&&) noexcept;
  ~file();

  const std::string& path() const noexcept;
  const std::vector<tensor>& tensors() const noexcept;      // in data order
  const tensor* find(const std::string& name) const noexcept;  // nullptr if absent
  const uint8_t* data(const tensor& t) const noexcept;      // t from this file's tensors()
  // Drops the pages of [p, p+n) from the resident set (the mapping stays valid).
  void release(const void* p, std::size_t n) const noexcept;

 private:
  struct impl;
  explicit file(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> p_;
};

// Elements of a tensor as f32 (F16/BF16 widened exactly); `out` holds t.elements() floats.
void to_f32(const file& f, const tensor& t, float* out);

// Writes a safetensors file from f32 rows, converting each tensor to its dtype. `fill` produces
// tensor i's values (shape product floats) into the buffer it is given, one tensor at a time.
struct tensor_spec {
  std::string name;
  dtype type = dtype::f16;
  std::vector<int64_t> shape;
};
void write(const std::string& path, const std::vector<tensor_spec>& specs,
           const std::function<void(std::size_t index, float* out)>& fill);

}  // namespace qllm::safetensors
