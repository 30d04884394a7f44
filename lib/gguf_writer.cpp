// GGUF v3 writer: validates on insertion so it never emits a file the reader would reject.
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qllm/gguf.hpp"

namespace qllm::gguf {

namespace {

constexpr std::size_t max_name_bytes = 64 * 1024;  // the reader's limit for keys and tensor names
constexpr int max_array_depth = 2;

[[noreturn]] void bad_arg(const std::string& what, const std::string& msg) {
  throw error(errc::invalid_argument, "gguf writer: " + what + ": " + msg);
}

// "key 'name'" for messages; a 64 KiB name would drown the error.
std::string label(const char* kind, const std::string& name) {
  return std::string(kind) + " '" + name.substr(0, 200) + (name.size() > 200 ? "...'" : "'");
}

void check_name(const std::string& what, const std::string& name) {
  if (name.size() > max_name_bytes)
    bad_arg(what, "length " + std::to_string(name.size()) + " exceeds the " +
                      std::to_string(max_name_bytes) + "-byte limit");
}

bool fits_unsigned(value_type t, uint64_t u) {
  switch (t) {
    case value_type::u8:
      return u <= 0xff;
    case value_type::u16:
      return u <= 0xffff;
    case value_type::u32:
      return u <= 0xffffffffu;
    case value_type::u64:
      return true;
    case value_type::boolean:
      return u <= 1;
    default:
      return false;
  }
}

bool fits_signed(value_type t, int64_t i) {
  switch (t) {
    case value_type::i8:
      return i >= INT8_MIN && i <= INT8_MAX;
    case value_type::i16:
      return i >= INT16_MIN && i <= INT16_MAX;
    case value_type::i32:
      return i >= INT32_MIN && i <= INT32_MAX;
    case value_type::i64:
      return true;
    default:
      return false;
  }
}

enum class kind { uint, sint, real, string, array, unknown };

kind kind_of(value_type t) {
  switch (t) {
    case value_type::u8:
    case value_type::u16:
    case value_type::u32:
    case value_type::u64:
    case value_type::boolean:
      return kind::uint;
    case value_type::i8:
    case value_type::i16:
    case value_type::i32:
    case value_type::i64:
      return kind::sint;
    case value_type::f32:
    case value_type::f64:
      return kind::real;
    case value_type::string:
      return kind::string;
    case value_type::array:
      return kind::array;
    default:
      return kind::unknown;
  }
}

void check_value(const std::string& what, const value& v, int depth) {
  const std::string tn = value_type_name(v.type);
  switch (kind_of(v.type)) {
    case kind::uint:
      if (!fits_unsigned(v.type, v.u)) bad_arg(what, std::to_string(v.u) + " does not fit " + tn);
      return;
    case kind::sint:
      if (!fits_signed(v.type, v.i)) bad_arg(what, std::to_string(v.i) + " does not fit " + tn);
      return;
    case kind::real:
    case kind::string:
      return;
    case kind::unknown:
      bad_arg(what, "unknown value type " + std::to_string(uint32_t(v.type)));
    case kind::array:
      break;
  }
  if (depth > max_array_depth)
    bad_arg(what, "arrays nested deeper than " + std::to_string(max_array_depth) + " levels");
  const kind ek = kind_of(v.elem_type);
  if (ek == kind::unknown)
    bad_arg(what, "unknown array element type " + std::to_string(uint32_t(v.elem_type)));
  const std::size_t used = ek == kind::uint     ? v.uints.size()
                           : ek == kind::sint   ? v.ints.size()
                           : ek == kind::real   ? v.floats.size()
                           : ek == kind::string ? v.strings.size()
                                                : v.arrays.size();
  if (used != v.array_size())
    bad_arg(what, std::string("array of ") + value_type_name(v.elem_type) +
                      " has elements in the vector for another type");
  for (uint64_t u : v.uints)
    if (!fits_unsigned(v.elem_type, u))
      bad_arg(what,
              "element " + std::to_string(u) + " does not fit " + value_type_name(v.elem_type));
  for (int64_t i : v.ints)
    if (!fits_signed(v.elem_type, i))
      bad_arg(what,
              "element " + std::to_string(i) + " does not fit " + value_type_name(v.elem_type));
  for (const value& a : v.arrays) {
    if (a.type != value_type::array) bad_arg(what, "an array of arrays holds a non-array");
    check_value(what, a, depth + 1);
  }
}

class byte_buf {
 public:
  std::vector<uint8_t> bytes;

  template <class T>
  void put(T v) {  // little-endian regardless of host
    auto u = static_cast<std::make_unsigned_t<T>>(v);
    for (std::size_t k = 0; k < sizeof(T); ++k) bytes.push_back(uint8_t(u >> (8 * k)));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void put_uint(value_type t, uint64_t u) {
    switch (t) {
      case value_type::u8:
      case value_type::boolean:
        put(uint8_t(u));
        break;
      case value_type::u16:
        put(uint16_t(u));
        break;
      case value_type::u32:
        put(uint32_t(u));
        break;
      default:
        put(u);
        break;
    }
  }
  void put_int(value_type t, int64_t i) {
    switch (t) {
      case value_type::i8:
        put(int8_t(i));
        break;
      case value_type::i16:
        put(int16_t(i));
        break;
      case value_type::i32:
        put(int32_t(i));
        break;
      default:
        put(i);
        break;
    }
  }
  void put_float(value_type t, double f) {
    if (t == value_type::f32)
      put(std::bit_cast<uint32_t>(float(f)));
    else
      put(std::bit_cast<uint64_t>(f));
  }
  void put_value(const value& v) {
    switch (kind_of(v.type)) {
      case kind::uint:
        put_uint(v.type, v.u);
        return;
      case kind::sint:
        put_int(v.type, v.i);
        return;
      case kind::real:
        put_float(v.type, v.f);
        return;
      case kind::string:
        put_string(v.s);
        return;
      default:
        break;
    }
    put(uint32_t(v.elem_type));
    put<uint64_t>(v.array_size());
    for (uint64_t u : v.uints) put_uint(v.elem_type, u);
    for (int64_t i : v.ints) put_int(v.elem_type, i);
    for (double f : v.floats) put_float(v.elem_type, f);
    for (const auto& s : v.strings) put_string(s);
    for (const auto& a : v.arrays) put_value(a);
  }
};

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

}  // namespace

void writer::put(std::string key, value v) {
  const std::string what = label("key", key);
  check_name(what, key);
  check_value(what, v, 1);
  if (key == "general.alignment") {
    if (v.type != value_type::u32)
      bad_arg(what, std::string("has type ") + value_type_name(v.type) + ", expected u32");
    if (v.u == 0 || !std::has_single_bit(v.u))
      bad_arg(what, std::to_string(v.u) + " is not a nonzero power of two");
    alignment_ = uint32_t(v.u);
  }
  if (const auto it = kv_index_.find(key); it != kv_index_.end()) {
    kvs_[it->second].second = std::move(v);
    return;
  }
  kv_index_.emplace(key, kvs_.size());
  kvs_.emplace_back(std::move(key), std::move(v));
}

void writer::set(std::string key, value v) {
  put(std::move(key), std::move(v));
}

void writer::set_u32(std::string key, uint32_t x) {
  value v = value::scalar(value_type::u32);
  v.u = x;
  put(std::move(key), std::move(v));
}

void writer::set_i32(std::string key, int32_t x) {
  value v = value::scalar(value_type::i32);
  v.i = x;
  put(std::move(key), std::move(v));
}

void writer::set_u64(std::string key, uint64_t x) {
  value v = value::scalar(value_type::u64);
  v.u = x;
  put(std::move(key), std::move(v));
}

void writer::set_f32(std::string key, float x) {
  value v = value::scalar(value_type::f32);
  v.f = x;
  put(std::move(key), std::move(v));
}

void writer::set_bool(std::string key, bool x) {
  value v = value::scalar(value_type::boolean);
  v.u = x ? 1 : 0;
  put(std::move(key), std::move(v));
}

void writer::set_string(std::string key, std::string x) {
  value v = value::scalar(value_type::string);
  v.s = std::move(x);
  put(std::move(key), std::move(v));
}

void writer::set_array_string(std::string key, std::vector<std::string> x) {
  value v = value::array(value_type::string);
  v.strings = std::move(x);
  put(std::move(key), std::move(v));
}

void writer::set_array_f32(std::string key, const std::vector<float>& x) {
  value v = value::array(value_type::f32);
  v.floats.assign(x.begin(), x.end());
  put(std::move(key), std::move(v));
}

void writer::set_array_i32(std::string key, const std::vector<int32_t>& x) {
  value v = value::array(value_type::i32);
  v.ints.assign(x.begin(), x.end());
  put(std::move(key), std::move(v));
}

void writer::set_alignment(uint32_t alignment) {
  set_u32("general.alignment", alignment);
}

void writer::add_entry(tensor_entry e) {
  const std::string what = label("tensor", e.info.name);
  if (e.info.name.empty()) bad_arg("tensor", "empty name");
  check_name(what, e.info.name);
  if (tensor_index_.count(e.info.name)) bad_arg(what, "duplicate name");
  try {
    e.info.bytes = tensor_bytes(e.info.type, e.info.ne);
  } catch (const error& err) {
    bad_arg(what, err.what());
  }
  tensor_index_.emplace(e.info.name, tensors_.size());
  tensors_.push_back(std::move(e));
}

void writer::add_tensor(std::string name, ggml_type type, std::vector<int64_t> ne, const void* data,
                        std::size_t bytes) {
  tensor_entry e;
  e.info.name = std::move(name);
  e.info.type = type;
  e.info.ne = std::move(ne);
  const std::string what = label("tensor", e.info.name);
  uint64_t expected = 0;
  try {
    expected = tensor_bytes(type, e.info.ne);
  } catch (const error& err) {
    bad_arg(what, err.what());
  }
  if (bytes != expected)
    bad_arg(what, std::to_string(bytes) + " bytes given, " + type_name(type) + " shape implies " +
                      std::to_string(expected));
  if (bytes > 0 && !data) bad_arg(what, "null data");
  try {
    const auto* p = static_cast<const uint8_t*>(data);
    e.data.assign(p, p + bytes);
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "gguf writer: " + what + ": out of memory copying data");
  }
  add_entry(std::move(e));
}

void writer::add_tensor_fn(std::string name, ggml_type type, std::vector<int64_t> ne,
                           std::function<void(uint8_t*, std::size_t)> fill) {
  tensor_entry e;
  e.info.name = std::move(name);
  e.info.type = type;
  e.info.ne = std::move(ne);
  if (!fill) bad_arg("tensor '" + e.info.name + "'", "empty fill callback");
  e.fill = std::move(fill);
  add_entry(std::move(e));
}

void writer::emit(const std::function<void(const uint8_t*, std::size_t)>& sink) const {
  byte_buf h;
  h.put<uint32_t>(0x46554747);  // "GGUF"
  h.put<uint32_t>(3);
  h.put<uint64_t>(tensors_.size());
  h.put<uint64_t>(kvs_.size());
  for (const auto& [key, v] : kvs_) {
    h.put_string(key);
    h.put(uint32_t(v.type));
    h.put_value(v);
  }
  std::vector<uint64_t> offsets;
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    offsets.push_back(off);
    off = align_up(off + t.info.bytes, alignment_);
  }
  for (std::size_t k = 0; k < tensors_.size(); ++k) {
    const auto& t = tensors_[k].info;
    h.put_string(t.name);
    h.put(uint32_t(t.ne.size()));
    for (int64_t n : t.ne) h.put(n);
    h.put(uint32_t(t.type));
    h.put(offsets[k]);
  }
  h.bytes.resize(align_up(h.bytes.size(), alignment_), 0);
  sink(h.bytes.data(), h.bytes.size());

  const std::vector<uint8_t> zeros(alignment_, 0);
  std::vector<uint8_t> buf;  // reused by fill callbacks
  uint64_t pos = 0;          // relative to the data section
  for (std::size_t k = 0; k < tensors_.size(); ++k) {
    const auto& t = tensors_[k];
    sink(zeros.data(), std::size_t(offsets[k] - pos));  // < alignment_ bytes
    const auto n = std::size_t(t.info.bytes);
    if (!t.fill) {
      sink(t.data.data(), n);
    } else {
      buf.assign(n, 0);
      try {
        t.fill(buf.data(), n);
      } catch (const error&) {
        throw;
      } catch (const std::bad_alloc&) {
        throw error(errc::out_of_memory,
                    "gguf writer: filling tensor '" + t.info.name + "': out of memory");
      } catch (const std::exception& e) {
        throw error(errc::internal,
                    "gguf writer: filling tensor '" + t.info.name + "': " + e.what());
      } catch (...) {
        throw error(errc::internal, "gguf writer: filling tensor '" + t.info.name + "' threw");
      }
      sink(buf.data(), n);
    }
    pos = offsets[k] + t.info.bytes;
  }
}

std::vector<uint8_t> writer::to_bytes() const {
  try {
    std::vector<uint8_t> out;
    emit([&](const uint8_t* p, std::size_t n) { out.insert(out.end(), p, p + n); });
    return out;
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "gguf writer: out of memory building the file");
  } catch (const std::length_error&) {
    throw error(errc::out_of_memory, "gguf writer: file too large to build in memory");
  }
}

void writer::write(const std::string& path) const {
  // The file is written unnamed (O_TMPFILE) in the directory of `path`, fsync'ed, linked under a
  // temporary name and renamed over `path`: readers never see a partial file, and an interrupted
  // process (Ctrl-C, kill, power loss) leaves nothing behind. Filesystems without O_TMPFILE get
  // a named temporary file (path.XXXXXX) instead, removed on failure.
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const mode_t mask = umask(0);
  umask(mask);
  std::string tmp;
  int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666 & ~mask);
  const bool unnamed = fd >= 0;
  if (!unnamed) {
    tmp = path + ".XXXXXX";
    fd = mkstemp(tmp.data());
    if (fd < 0)
      throw error(errc::io, "gguf writer: cannot create a file next to '" + path + "': " + std::strerror(errno));
    fchmod(fd, 0666 & ~mask);
  }
  std::FILE* f = fdopen(fd, "wb");
  if (!f) {
    ::close(fd);
    if (!unnamed) std::remove(tmp.c_str());
    throw error(errc::io, "gguf writer: cannot open a file next to '" + path + "': " + std::strerror(errno));
  }
  struct guard {
    std::FILE* f;
    const std::string& tmp;
    bool done = false;
    ~guard() {
      if (f) std::fclose(f);
      if (!done) std::remove(tmp.c_str());
    }
  } g{f, tmp};
  auto io_fail = [&](const char* what) {
    throw error(errc::io, "gguf writer: cannot " + std::string(what) + " '" + path +
                              "': " + std::strerror(errno));
  };
  try {
    emit([&](const uint8_t* p, std::size_t n) {
      if (n > 0 && std::fwrite(p, 1, n, f) != n) io_fail("write");
    });
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "gguf writer: out of memory writing '" + path + "'");
  } catch (const std::length_error&) {
    throw error(errc::out_of_memory, "gguf writer: tensor too large to buffer for '" + path + "'");
  }
  if (std::fflush(f) != 0) io_fail("write");
  if (fsync(fileno(f)) != 0) io_fail("sync");
  if (unnamed) {  // give the finished file a unique temporary name, then rename it over `path`
    const std::string proc = "/proc/self/fd/" + std::to_string(fileno(f));
    for (unsigned i = 0; tmp.empty(); ++i) {
      std::string name = path + ".tmp" + std::to_string(getpid()) + "." + std::to_string(i);
      if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0 ||
          ::linkat(fileno(f), "", AT_FDCWD, name.c_str(), AT_EMPTY_PATH) == 0)
        tmp = std::move(name);
      else if (errno != EEXIST || i > 1000)
        io_fail("link the finished file next to");
    }
  }
  g.f = nullptr;
  if (std::fclose(f) != 0) io_fail("close");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) io_fail("rename the finished file to");
  g.done = true;
}

}  // namespace qllm::gguf
