// GGUF v2/v3 reader (validated, memory-mapped) and v3 writer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/formats.hpp"

namespace qllm::gguf {

// ---- tensor types ----------------------------------------------------------------------------

// True if `type` is a ggml_type number qllm knows the block layout of.
bool type_known(uint32_t type) noexcept;
// Elements per block (1 for f32/f16/bf16, 32 for q*_0/q*_1, 256 for k-quants); 0 if unknown.
int64_t type_block_elems(ggml_type type) noexcept;
// Bytes per block; 0 if unknown.
std::size_t type_block_bytes(ggml_type type) noexcept;
// GGUF spelling ("f32", "q4_0", "q6_k", ...); "unknown" if unknown.
const char* type_name(ggml_type type) noexcept;

// Bytes of a tensor of `type` and shape `ne` (ne[0] is the row length).
// Throws qllm::error(errc::invalid_argument) if the type is unknown, ne has 0 or more than 4 dims,
// a dim is negative, ne[0] is not a multiple of the block size, or a count overflows.
uint64_t tensor_bytes(ggml_type type, std::span<const int64_t> ne);

// ---- metadata values -------------------------------------------------------------------------

enum class value_type : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

// "u8", "string", "array", ...; "unknown" for numbers past f64.
const char* value_type_name(value_type type) noexcept;

// One metadata value. Only the field(s) for `type` (and `elem_type` for arrays) are used;
// the others stay empty, so defaulted == compares what was read against what was written.
struct value {
  value_type type = value_type::u8;
  uint64_t u = 0;                         // u8, u16, u32, u64, boolean (0 or 1)
  int64_t i = 0;                          // i8, i16, i32, i64
  double f = 0.0;                         // f32 (widened exactly), f64
  std::string s;                          // string
  value_type elem_type = value_type::u8;  // array: the type of every element
  std::vector<uint64_t> uints;            // array of u8, u16, u32, u64 or boolean
  std::vector<int64_t> ints;              // array of i8, i16, i32, i64
  std::vector<double> floats;             // array of f32, f64
  std::vector<std::string> strings;       // array of string
  std::vector<value> arrays;              // array of arrays (one level of nesting at most)

  static value scalar(value_type t) {
    value v;
    v.type = t;
    return v;
  }
  static value array(value_type elem) {  // an empty array of `elem` elements
    value v;
    v.type = value_type::array;
    v.elem_type = elem;
    return v;
  }

  // Element count of an array (0 for scalars).
  std::size_t array_size() const noexcept;
  bool operator==(const value&) const = default;
};

// ---- reader ----------------------------------------------------------------------------------

struct tensor_info {
  std::string name;
  ggml_type type = ggml_type::f32;
  std::vector<int64_t> ne;  // [n_dims], ne[0] is the contiguous row length
  uint64_t offset = 0;      // from data_section(), a multiple of the alignment
  uint64_t bytes = 0;       // implied by type and ne
};

// The most memory the parsed metadata and tensor table of one file may take. Counts are checked
// against the bytes in the file, but an element costs more in memory than on disk (an empty
// nested array: 12 bytes on disk, about 200 in memory), so a file past this is bad_format.
// A real Llama vocabulary of 32,000 pieces takes about 2 MiB.
inline constexpr uint64_t metadata_memory_limit = uint64_t(256) << 20;

// What the file system said of an opened file (fstat of the descriptor that was mapped, so a
// file renamed over the path afterwards does not change it). Times in nanoseconds.
struct file_identity {
  uint64_t dev = 0, ino = 0, size = 0, mtime_ns = 0, ctime_ns = 0;
};

// A validated GGUF file: every count, string, type, shape and tensor range is checked on open,
// so tensor_data() pointers are always in bounds. Moved-from objects may only be destroyed or
// assigned to.
class file {
 public:
  // Maps `path` read-only. Throws qllm::error: errc::io if it cannot be opened, stat'ed or mapped;
  // errc::bad_format (message names the path and the offending field, key or tensor) for any
  // invalid content; errc::out_of_memory if the metadata does not fit in memory.
  static file open(const std::string& path);
  // Parses caller memory without copying; the memory must outlive the file.
  // Throws as open() does, without errc::io.
  static file from_memory(const void* data, std::size_t size);

  file(file&&) noexcept;
  file& operator=(file&&) noexcept;
  ~file();  // unmaps

  uint32_t version() const noexcept;
  std::size_t alignment() const noexcept;  // general.alignment, or 32
  std::size_t size() const noexcept;       // bytes of the whole file
  const file_identity& identity() const noexcept;  // zeros for from_memory

  // Every key/value in file order.
  const std::vector<std::pair<std::string, value>>& metadata() const noexcept;
  const value* find(std::string_view key) const noexcept;  // nullptr if absent

  // Typed getters. Each throws qllm::error(errc::bad_format) naming the key if it is missing
  // (only the variants without a default) or has an incompatible type or out-of-range value.
  // Integer getters accept any integer type whose value fits; get_float also accepts integers.
  uint64_t get_uint(std::string_view key) const;
  uint64_t get_uint(std::string_view key, uint64_t fallback) const;
  int64_t get_int(std::string_view key) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key) const;
  bool get_bool(std::string_view key, bool fallback) const;
  const std::string& get_string(std::string_view key) const;
  std::string get_string(std::string_view key, std::string fallback) const;
  // Array getters: throw errc::bad_format if missing, not an array, or of other elements.
  const std::vector<std::string>& get_array_string(std::string_view key) const;
  const std::vector<double>& get_array_float(std::string_view key) const;  // f32 or f64 elements
  std::vector<int64_t> get_array_int(std::string_view key) const;  // any integer elements that fit

  const std::vector<tensor_info>& tensors() const noexcept;              // in file order
  const tensor_info* find_tensor(std::string_view name) const noexcept;  // nullptr if absent
  // `t` must come from this file's tensors().
  const uint8_t* tensor_data(const tensor_info& t) const noexcept;
  // Start of the tensor data (clamped to the end of the file when there are no tensors).
  const uint8_t* data_section() const noexcept;

  // Drops the whole pages inside [p, p+n) from this process's resident set (madvise
  // MADV_DONTNEED; the file stays mapped, so the pages read back from disk if touched).
  // Parts outside the mapping are ignored; no-op for from_memory. Used after weights are repacked.
  void release(const void* p, std::size_t n) const noexcept;

  struct impl;  // opaque: the mapping and parsed tables, defined in gguf_reader.cpp

 private:
  explicit file(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> p_;
};

// ---- writer ----------------------------------------------------------------------------------

// Builds a GGUF v3 file: kvs in insertion order (setting a key again replaces its value in place),
// then tensor infos, padding to the alignment, then each tensor's data at an aligned offset.
// Setters throw qllm::error(errc::invalid_argument) on invalid input, naming the key or tensor.
class writer {
 public:
  void set_u32(std::string key, uint32_t v);
  void set_i32(std::string key, int32_t v);
  void set_u64(std::string key, uint64_t v);
  void set_f32(std::string key, float v);
  void set_bool(std::string key, bool v);
  void set_string(std::string key, std::string v);
  void set_array_string(std::string key, std::vector<std::string> v);
  void set_array_f32(std::string key, const std::vector<float>& v);
  void set_array_i32(std::string key, const std::vector<int32_t>& v);
  // Any value (e.g. copied from a file's metadata()); throws if a field is out of its type's range,
  // an array's element vector is not the one for elem_type, or arrays nest more than one level.
  void set(std::string key, value v);
  // Sets general.alignment (u32); throws errc::invalid_argument unless a nonzero power of two.
  // set_u32("general.alignment", a) does the same; other setters reject that key.
  void set_alignment(uint32_t alignment);

  // Copies `bytes` bytes of tensor data. Throws errc::invalid_argument if the name is empty or
  // already used, or `bytes` differs from tensor_bytes(type, ne) (which may throw too).
  void add_tensor(std::string name, ggml_type type, std::vector<int64_t> ne, const void* data,
                  std::size_t bytes);
  // Like add_tensor, but `fill` writes the tensor's bytes into `dst` at write time, so large models
  // are never held in memory whole. Exceptions from `fill` leave write()/to_bytes() as
  // qllm::error (its own, or errc::internal / errc::out_of_memory).
  void add_tensor_fn(std::string name, ggml_type type, std::vector<int64_t> ne,
                     std::function<void(uint8_t* dst, std::size_t bytes)> fill);

  // Writes a temporary file next to `path` (path.XXXXXX), fsyncs it and renames it to `path`, so
  // readers never see a partial file. Throws errc::io naming the path (the temporary file is
  // removed, `path` is untouched) or what a fill callback threw.
  void write(const std::string& path) const;
  // The same bytes in memory; throws errc::out_of_memory or what a fill callback threw.
  std::vector<uint8_t> to_bytes() const;

 private:
  struct tensor_entry {
    tensor_info info;
    std::vector<uint8_t> data;  // [info.bytes] unless fill is set
    std::function<void(uint8_t*, std::size_t)> fill;
  };
  void put(std::string key, value v);
  void add_entry(tensor_entry e);
  void emit(const std::function<void(const uint8_t*, std::size_t)>& sink) const;

  std::vector<std::pair<std::string, value>> kvs_;
  std::unordered_map<std::string, std::size_t> kv_index_;
  std::vector<tensor_entry> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
  uint32_t alignment_ = 32;
};

}  // namespace qllm::gguf
