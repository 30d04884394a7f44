// GGUF parsing: every read is bounds-checked and every count is checked against the bytes left
// before anything is allocated, so hostile files fail with errc::bad_format instead of crashing.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <new>

#include "qllm/gguf.hpp"

namespace qllm::gguf {

namespace {

constexpr uint64_t max_name_bytes = 64 * 1024;  // keys and tensor names
constexpr int max_array_depth = 2;              // an array may hold arrays, those may not
constexpr std::size_t default_alignment = 32;
constexpr std::size_t header_bytes = 24;      // magic, version, tensor_count, kv_count
constexpr uint64_t min_kv_bytes = 8 + 4 + 1;  // empty key, type, one-byte value
constexpr uint64_t min_tensor_info_bytes = 8 + 1 + 4 + 8 + 4 + 8;  // 1-char name, one dim

struct type_traits {
  ggml_type type;
  int64_t block_elems;
  std::size_t block_bytes;
  const char* name;
};

constexpr type_traits type_table[] = {
    {ggml_type::f32, 1, 4, "f32"},       {ggml_type::f16, 1, 2, "f16"},
    {ggml_type::bf16, 1, 2, "bf16"},     {ggml_type::q4_0, 32, 18, "q4_0"},
    {ggml_type::q4_1, 32, 20, "q4_1"},   {ggml_type::q5_0, 32, 22, "q5_0"},
    {ggml_type::q5_1, 32, 24, "q5_1"},   {ggml_type::q8_0, 32, 34, "q8_0"},
    {ggml_type::q8_1, 32, 36, "q8_1"},   {ggml_type::q2_k, 256, 84, "q2_k"},
    {ggml_type::q3_k, 256, 110, "q3_k"}, {ggml_type::q4_k, 256, 144, "q4_k"},
    {ggml_type::q5_k, 256, 176, "q5_k"}, {ggml_type::q6_k, 256, 210, "q6_k"},
    {ggml_type::q8_k, 256, 292, "q8_k"},
};

const type_traits* find_type(uint32_t type) noexcept {
  for (const auto& t : type_table)
    if (uint32_t(t.type) == type) return &t;
  return nullptr;
}

// Fixed size of a scalar element in the file, by value_type number; 0 for string and array.
uint64_t scalar_bytes(value_type t) noexcept {
  constexpr uint8_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return uint32_t(t) < sizeof sizes ? sizes[uint32_t(t)] : 0;
}

// Smallest encoding of one array element, which bounds how many the remaining bytes can hold.
uint64_t min_elem_bytes(value_type t) noexcept {
  if (t == value_type::string) return 8;
  if (t == value_type::array) return 4 + 8;
  return scalar_bytes(t);
}

bool is_unsigned(value_type t) {
  return t == value_type::u8 || t == value_type::u16 || t == value_type::u32 ||
         t == value_type::u64;
}
bool is_signed(value_type t) {
  return t == value_type::i8 || t == value_type::i16 || t == value_type::i32 ||
         t == value_type::i64;
}
bool is_float(value_type t) {
  return t == value_type::f32 || t == value_type::f64;
}

// Names from the file go into messages: escape control bytes and cap the length.
std::string quote(std::string_view s) {
  std::string out = "'";
  for (std::size_t k = 0; k < s.size() && k < 200; ++k) {
    const auto c = static_cast<unsigned char>(s[k]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += char(c);
    } else {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (s.size() > 200) out += "...";
  return out + "'";
}

class cursor {
 public:
  cursor(const uint8_t* p, std::size_t n, std::string prefix)
      : p_(p), n_(n), prefix_(std::move(prefix)) {}

  std::size_t pos() const { return pos_; }
  uint64_t remaining() const { return n_ - pos_; }
  void set_context(std::string ctx) { ctx_ = std::move(ctx); }

  [[noreturn]] void fail(const std::string& msg) const {
    throw error(errc::bad_format, prefix_ + (ctx_.empty() ? "" : ctx_ + ": ") + msg);
  }

  void need(uint64_t bytes, const char* what) const {
    if (bytes > remaining())
      fail(std::string("truncated: ") + what + " needs " + std::to_string(bytes) +
           " bytes at offset " + std::to_string(pos_) + ", file size " + std::to_string(n_));
  }

  // Little-endian load of n <= 8 bytes, independent of host byte order.
  uint64_t read_le(unsigned n, const char* what) {
    need(n, what);
    uint64_t v = 0;
    for (unsigned k = 0; k < n; ++k) v |= uint64_t(p_[pos_ + k]) << (8 * k);
    pos_ += n;
    return v;
  }
  template <class T>
  T read(const char* what) {
    return static_cast<T>(read_le(sizeof(T), what));
  }

  std::string read_string(const char* what, uint64_t max_len) {
    const uint64_t len = read<uint64_t>(what);
    if (len > max_len)
      fail(std::string(what) + " " + std::to_string(len) + " exceeds the " +
           std::to_string(max_len) + "-byte limit");
    if (len > remaining())
      fail(std::string(what) + " " + std::to_string(len) + " exceeds the " +
           std::to_string(remaining()) + " bytes left at offset " + std::to_string(pos_));
    charge(len, what);  // the std::string object itself is charged with what holds it
    std::string s(reinterpret_cast<const char*>(p_ + pos_), std::size_t(len));
    pos_ += std::size_t(len);
    return s;
  }

  // Counts `bytes` of memory the parsed metadata will take; throws past metadata_memory_limit,
  // before the allocation is made.
  void charge(uint64_t bytes, const char* what) {
    if (bytes > metadata_memory_limit - std::min(mem_, metadata_memory_limit))
      fail(std::string(what) + ": the metadata would take more than " +
           std::to_string(metadata_memory_limit >> 20) + " MiB of memory (" +
           std::to_string(mem_ >> 20) + " MiB so far, " + std::to_string(bytes) +
           " bytes more at offset " + std::to_string(pos_) + ")");
    mem_ += bytes;
  }

  // Throws before a count larger than the remaining bytes could hold is used to allocate.
  void check_count(uint64_t count, uint64_t min_each, const char* what) const {
    if (count > remaining() / min_each)
      fail(std::string(what) + " " + std::to_string(count) + " exceeds what the " +
           std::to_string(remaining()) + " remaining bytes can hold");
  }

 private:
  const uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
  std::string prefix_;  // "gguf: " or "gguf: '<path>': "
  std::string ctx_;     // the key or tensor being read
  uint64_t mem_ = 0;    // memory charged so far (metadata_memory_limit)
};

value_type read_type(cursor& c, const char* what) {
  const uint32_t t = c.read<uint32_t>(what);
  if (t > uint32_t(value_type::f64))
    c.fail("unknown " + std::string(what) + " " + std::to_string(t));
  return value_type(t);
}

void read_scalar(cursor& c, value_type t, value& v) {
  const unsigned n = unsigned(scalar_bytes(t));
  const uint64_t raw = c.read_le(n, value_type_name(t));
  if (t == value_type::f32) {
    v.f = std::bit_cast<float>(uint32_t(raw));
  } else if (t == value_type::f64) {
    v.f = std::bit_cast<double>(raw);
  } else if (is_signed(t)) {
    const unsigned shift = 64 - 8 * n;  // sign-extend the n-byte value
    v.i = std::bit_cast<int64_t>(raw << shift) >> shift;
  } else {
    v.u = raw;
    if (t == value_type::boolean && raw > 1)
      c.fail("bool value " + std::to_string(raw) + " is neither 0 nor 1");
  }
}

value read_value(cursor& c, value_type t, int depth) {
  value v;
  v.type = t;
  if (t == value_type::string) {
    v.s = c.read_string("string length", UINT64_MAX);
  } else if (t != value_type::array) {
    read_scalar(c, t, v);
  } else {
    if (depth > max_array_depth)
      c.fail("arrays nested deeper than " + std::to_string(max_array_depth) + " levels");
    v.elem_type = read_type(c, "array element type");
    const uint64_t count = c.read<uint64_t>("array length");
    c.check_count(count, min_elem_bytes(v.elem_type), "array length");
    const auto n = std::size_t(count);
    // the vector is charged before it is reserved (string contents charge themselves)
    if (v.elem_type == value_type::array) c.charge(count * sizeof(value), "array length");
    else if (v.elem_type == value_type::string) c.charge(count * sizeof(std::string), "array length");
    else c.charge(count * 8, "array length");
    value elem;
    if (v.elem_type == value_type::string) {
      v.strings.reserve(n);
      for (std::size_t k = 0; k < n; ++k)
        v.strings.push_back(c.read_string("string length", UINT64_MAX));
    } else if (v.elem_type == value_type::array) {
      v.arrays.reserve(n);
      for (std::size_t k = 0; k < n; ++k)
        v.arrays.push_back(read_value(c, value_type::array, depth + 1));
    } else if (is_float(v.elem_type)) {
      v.floats.reserve(n);
      for (std::size_t k = 0; k < n; ++k)
        v.floats.push_back((read_scalar(c, v.elem_type, elem), elem.f));
    } else if (is_signed(v.elem_type)) {
      v.ints.reserve(n);
      for (std::size_t k = 0; k < n; ++k)
        v.ints.push_back((read_scalar(c, v.elem_type, elem), elem.i));
    } else {
      v.uints.reserve(n);
      for (std::size_t k = 0; k < n; ++k)
        v.uints.push_back((read_scalar(c, v.elem_type, elem), elem.u));
    }
  }
  return v;
}

}  // namespace

// ---- types -----------------------------------------------------------------------------------

bool type_known(uint32_t type) noexcept {
  return find_type(type) != nullptr;
}

int64_t type_block_elems(ggml_type type) noexcept {
  const auto* t = find_type(uint32_t(type));
  return t ? t->block_elems : 0;
}

std::size_t type_block_bytes(ggml_type type) noexcept {
  const auto* t = find_type(uint32_t(type));
  return t ? t->block_bytes : 0;
}

const char* type_name(ggml_type type) noexcept {
  const auto* t = find_type(uint32_t(type));
  return t ? t->name : "unknown";
}

uint64_t tensor_bytes(ggml_type type, std::span<const int64_t> ne) {
  auto bad = [](const std::string& msg) { throw error(errc::invalid_argument, msg); };
  const auto* t = find_type(uint32_t(type));
  if (!t) bad("unknown ggml type " + std::to_string(uint32_t(type)));
  if (ne.empty() || ne.size() > 4) bad("n_dims " + std::to_string(ne.size()) + " is not in 1..4");
  int64_t elems = 1;
  for (std::size_t d = 0; d < ne.size(); ++d) {
    if (ne[d] < 0) bad("ne[" + std::to_string(d) + "] = " + std::to_string(ne[d]) + " is negative");
    if (__builtin_mul_overflow(elems, ne[d], &elems)) {
      std::string dims;
      for (auto x : ne) dims += (dims.empty() ? "" : ", ") + std::to_string(x);
      bad("element count of ne [" + dims + "] overflows int64");
    }
  }
  if (ne[0] % t->block_elems != 0)
    bad("ne[0] = " + std::to_string(ne[0]) + " is not a multiple of the " + t->name +
        " block size " + std::to_string(t->block_elems));
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(uint64_t(elems / t->block_elems), uint64_t(t->block_bytes), &bytes))
    bad("byte size of " + std::to_string(elems) + " " + t->name + " elements overflows uint64");
  return bytes;
}

const char* value_type_name(value_type type) noexcept {
  static const char* const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  return uint32_t(type) <= uint32_t(value_type::f64) ? names[uint32_t(type)] : "unknown";
}

std::size_t value::array_size() const noexcept {
  if (type != value_type::array) return 0;
  return uints.size() + ints.size() + floats.size() + strings.size() + arrays.size();
}

// ---- file ------------------------------------------------------------------------------------

struct file::impl {
  const uint8_t* base = nullptr;
  std::size_t size = 0;
  void* map = nullptr;  // owned mapping, or nullptr for from_memory
  std::size_t map_size = 0;
  uint32_t version = 0;
  std::size_t alignment = default_alignment;
  std::size_t data_start = 0;
  file_identity identity;  // of the descriptor the mapping came from (zeros for from_memory)
  std::vector<std::pair<std::string, value>> kvs;
  std::map<std::string, std::size_t, std::less<>> kv_index;
  std::vector<tensor_info> tensors;
  std::map<std::string, std::size_t, std::less<>> tensor_index;

  impl() = default;
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;
  ~impl() {
    if (map) munmap(map, map_size);
  }

  void parse(std::string prefix);
  void parse_tensor_infos(cursor& c, uint64_t count);
  [[noreturn]] void fail_key(std::string_view key, const std::string& msg) const {
    throw error(errc::bad_format, "gguf: key " + quote(key) + ": " + msg);
  }
  const value& need(std::string_view key) const;
};

void file::impl::parse(std::string prefix) {
  cursor c(base, size, prefix);
  if (size < header_bytes)
    c.fail("file is " + std::to_string(size) + " bytes, shorter than the " +
           std::to_string(header_bytes) + "-byte header");
  if (std::memcmp(base, "GGUF", 4) != 0) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%02x%02x%02x%02x", base[0], base[1], base[2], base[3]);
    c.fail(std::string("bad magic ") + hex + " (expected 'GGUF')");
  }
  c.read<uint32_t>("magic");
  version = c.read<uint32_t>("version");
  if (version == 1) c.fail("version 1 is not supported (it used 32-bit counts); only 2 and 3 are");
  if (version != 2 && version != 3)
    c.fail("version " + std::to_string(version) + " is not supported (only 2 and 3" +
           (version > 0xffff ? "; big-endian GGUF?)" : ")"));
  const uint64_t tensor_count = c.read<uint64_t>("tensor_count");
  const uint64_t kv_count = c.read<uint64_t>("metadata_kv_count");
  c.check_count(kv_count, min_kv_bytes, "metadata_kv_count");
  c.check_count(tensor_count, min_tensor_info_bytes, "tensor_count");
  if (kv_count * min_kv_bytes + tensor_count * min_tensor_info_bytes > c.remaining())
    c.fail("metadata_kv_count " + std::to_string(kv_count) + " and tensor_count " +
           std::to_string(tensor_count) + " exceed what the remaining bytes can hold");

  for (uint64_t k = 0; k < kv_count; ++k) {
    c.set_context("kv #" + std::to_string(k));
    std::string key = c.read_string("key length", max_name_bytes);
    c.set_context("key " + quote(key));
    if (kv_index.count(key)) c.fail("duplicate key");
    const value_type t = read_type(c, "value type");
    c.charge(sizeof(std::pair<std::string, value>) + 64 + key.size(), "key");  // + the index entry
    kv_index.emplace(key, kvs.size());
    kvs.emplace_back(std::move(key), read_value(c, t, 1));
  }
  c.set_context("");

  if (const auto it = kv_index.find("general.alignment"); it != kv_index.end()) {
    const value* a = &kvs[it->second].second;
    if (a->type != value_type::u32)
      c.fail(std::string("key 'general.alignment' has type ") + value_type_name(a->type) +
             ", expected u32");
    if (a->u == 0 || !std::has_single_bit(a->u))
      c.fail("key 'general.alignment' = " + std::to_string(a->u) +
             " is not a nonzero power of two");
    alignment = std::size_t(a->u);
  }
  parse_tensor_infos(c, tensor_count);
}

void file::impl::parse_tensor_infos(cursor& c, uint64_t count) {
  c.charge(count * (sizeof(tensor_info) + 64), "tensor_count");  // the table and its index
  tensors.reserve(std::size_t(count));
  for (uint64_t k = 0; k < count; ++k) {
    c.set_context("tensor #" + std::to_string(k));
    tensor_info t;
    t.name = c.read_string("name length", max_name_bytes);
    if (t.name.empty()) c.fail("empty tensor name");
    c.set_context("tensor " + quote(t.name));
    if (tensor_index.count(t.name)) c.fail("duplicate tensor name");
    const uint32_t n_dims = c.read<uint32_t>("n_dims");
    if (n_dims < 1 || n_dims > 4) c.fail("n_dims " + std::to_string(n_dims) + " is not in 1..4");
    c.charge(8 * n_dims, "tensor info");
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(c.read<int64_t>("ne"));
    const uint32_t type = c.read<uint32_t>("type");
    if (!type_known(type)) c.fail("unknown ggml type " + std::to_string(type));
    t.type = ggml_type(type);
    t.offset = c.read<uint64_t>("offset");
    try {
      t.bytes = tensor_bytes(t.type, t.ne);
    } catch (const error& e) {
      c.fail(e.what());
    }
    if (t.offset % alignment != 0)
      c.fail("offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
             std::to_string(alignment));
    tensor_index.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }
  c.set_context("");
  // c.pos() <= size, and alignment < 2^32, so this cannot overflow a 64-bit size_t.
  const uint64_t start = (uint64_t(c.pos()) + alignment - 1) / alignment * alignment;
  if (!tensors.empty() && start > size)
    c.fail("data section starts at " + std::to_string(start) + ", past end of file (size " +
           std::to_string(size) + ")");
  data_start = start > size ? size : std::size_t(start);
  for (const auto& t : tensors) {
    uint64_t end = 0;
    if (__builtin_add_overflow(t.offset, t.bytes, &end) ||
        __builtin_add_overflow(end, uint64_t(data_start), &end) || end > size) {
      c.set_context("tensor " + quote(t.name));
      c.fail("data [offset " + std::to_string(t.offset) + ", " + std::to_string(t.bytes) +
             " bytes] extends past end of file (size " + std::to_string(size) +
             ", data section at " + std::to_string(data_start) + ")");
    }
  }
  // The layout every GGUF writer produces and ggml's reader demands: tensors in the order of
  // their infos, each at the end of the previous one padded to the alignment. Anything else is
  // a damaged table: overlapping data, a type or shape whose size runs into the next tensor,
  // a size too small (a gap), or tensors out of order.
  uint64_t expect = 0;
  const tensor_info* prev = nullptr;
  for (const auto& t : tensors) {
    if (t.offset != expect) {
      c.set_context("tensor " + quote(t.name));
      if (!prev)
        c.fail("data starts at offset " + std::to_string(t.offset) +
               " of the data section; the first tensor must start at 0");
      const uint64_t prev_end = prev->offset + prev->bytes;
      if (t.offset < prev_end)
        c.fail("data at offset " + std::to_string(t.offset) + " overlaps tensor " +
               quote(prev->name) + " [offset " + std::to_string(prev->offset) + ", " +
               std::to_string(prev->bytes) + " bytes as " + type_name(prev->type) + "]");
      c.fail("data at offset " + std::to_string(t.offset) + " leaves a gap after tensor " +
             quote(prev->name) + ", which ends at " + std::to_string(prev_end) + " (" +
             std::to_string(expect) + " with alignment padding): its type or shape is wrong, "
             "or the tensors are out of order");
    }
    expect = (t.offset + t.bytes + alignment - 1) / alignment * alignment;  // no overflow: <= size
    prev = &t;
  }
}

namespace {
std::unique_ptr<file::impl> parse_guarded(std::unique_ptr<file::impl> im, std::string prefix) {
  try {
    im->parse(std::move(prefix));
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "gguf: out of memory reading the metadata");
  } catch (const std::length_error&) {
    throw error(errc::out_of_memory, "gguf: metadata too large");
  }
  return im;
}
}  // namespace

file::file(std::unique_ptr<impl> p) noexcept : p_(std::move(p)) {}
file::file(file&&) noexcept = default;
file& file::operator=(file&&) noexcept = default;
file::~file() = default;

file file::from_memory(const void* data, std::size_t size) {
  auto im = std::make_unique<impl>();
  im->base = static_cast<const uint8_t*>(data);
  im->size = data ? size : 0;
  return file(parse_guarded(std::move(im), "gguf: "));
}

file file::open(const std::string& path) {
  auto io_fail = [&](const char* what) {
    throw error(errc::io,
                "gguf: cannot " + std::string(what) + " '" + path + "': " + std::strerror(errno));
  };
  struct fd_guard {  // the mapping outlives the descriptor
    int fd;
    ~fd_guard() {
      if (fd >= 0) ::close(fd);
    }
  } fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) io_fail("open");
  struct stat st {};
  if (fstat(fd.fd, &st) != 0) io_fail("stat");
  if (!S_ISREG(st.st_mode)) throw error(errc::io, "gguf: '" + path + "' is not a regular file");
  if (uint64_t(st.st_size) > std::numeric_limits<std::size_t>::max())
    throw error(errc::io, "gguf: '" + path + "' is too large to map");
  auto im = std::make_unique<impl>();
  im->size = std::size_t(st.st_size);
  im->identity = {uint64_t(st.st_dev), uint64_t(st.st_ino), uint64_t(st.st_size),
                  uint64_t(st.st_mtim.tv_sec) * 1000000000u + uint64_t(st.st_mtim.tv_nsec),
                  uint64_t(st.st_ctim.tv_sec) * 1000000000u + uint64_t(st.st_ctim.tv_nsec)};
  if (im->size > 0) {
    void* m = mmap(nullptr, im->size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (m == MAP_FAILED && errno == ENOMEM)  // address space limit (ulimit -v), not the file
      throw error(errc::out_of_memory, "gguf: cannot map '" + path + "' (" + std::to_string(im->size) +
                                           " bytes): out of address space");
    if (m == MAP_FAILED) io_fail("map");
    im->map = m;
    im->map_size = im->size;
    im->base = static_cast<const uint8_t*>(m);
  }
  return file(parse_guarded(std::move(im), "gguf: '" + path + "': "));
}

uint32_t file::version() const noexcept {
  return p_->version;
}
std::size_t file::alignment() const noexcept {
  return p_->alignment;
}
const file_identity& file::identity() const noexcept {
  return p_->identity;
}
std::size_t file::size() const noexcept {
  return p_->size;
}

const std::vector<std::pair<std::string, value>>& file::metadata() const noexcept {
  return p_->kvs;
}

const value* file::find(std::string_view key) const noexcept {
  const auto it = p_->kv_index.find(key);
  return it == p_->kv_index.end() ? nullptr : &p_->kvs[it->second].second;
}

const value& file::impl::need(std::string_view key) const {
  const auto it = kv_index.find(key);
  if (it == kv_index.end()) fail_key(key, "missing");
  return kvs[it->second].second;
}

namespace {
std::string type_msg(const value& v, const char* expected) {
  std::string t = value_type_name(v.type);
  if (v.type == value_type::array) t += std::string(" of ") + value_type_name(v.elem_type);
  return "has type " + t + ", expected " + expected;
}
}  // namespace

uint64_t file::get_uint(std::string_view key) const {
  const value& v = p_->need(key);
  if (is_unsigned(v.type)) return v.u;
  if (!is_signed(v.type)) p_->fail_key(key, type_msg(v, "an unsigned integer"));
  if (v.i < 0) p_->fail_key(key, "value " + std::to_string(v.i) + " is negative");
  return uint64_t(v.i);
}

uint64_t file::get_uint(std::string_view key, uint64_t fallback) const {
  return find(key) ? get_uint(key) : fallback;
}

int64_t file::get_int(std::string_view key) const {
  const value& v = p_->need(key);
  if (is_signed(v.type)) return v.i;
  if (!is_unsigned(v.type)) p_->fail_key(key, type_msg(v, "an integer"));
  if (v.u > uint64_t(std::numeric_limits<int64_t>::max()))
    p_->fail_key(key, "value " + std::to_string(v.u) + " does not fit int64");
  return int64_t(v.u);
}

int64_t file::get_int(std::string_view key, int64_t fallback) const {
  return find(key) ? get_int(key) : fallback;
}

double file::get_float(std::string_view key) const {
  const value& v = p_->need(key);
  if (is_float(v.type)) return v.f;
  if (is_signed(v.type)) return double(v.i);
  if (is_unsigned(v.type)) return double(v.u);
  p_->fail_key(key, type_msg(v, "a number"));
}

double file::get_float(std::string_view key, double fallback) const {
  return find(key) ? get_float(key) : fallback;
}

bool file::get_bool(std::string_view key) const {
  const value& v = p_->need(key);
  if (v.type != value_type::boolean) p_->fail_key(key, type_msg(v, "bool"));
  return v.u != 0;
}

bool file::get_bool(std::string_view key, bool fallback) const {
  return find(key) ? get_bool(key) : fallback;
}

const std::string& file::get_string(std::string_view key) const {
  const value& v = p_->need(key);
  if (v.type != value_type::string) p_->fail_key(key, type_msg(v, "string"));
  return v.s;
}

std::string file::get_string(std::string_view key, std::string fallback) const {
  return find(key) ? get_string(key) : fallback;
}

const std::vector<std::string>& file::get_array_string(std::string_view key) const {
  const value& v = p_->need(key);
  if (v.type != value_type::array || v.elem_type != value_type::string)
    p_->fail_key(key, type_msg(v, "array of string"));
  return v.strings;
}

const std::vector<double>& file::get_array_float(std::string_view key) const {
  const value& v = p_->need(key);
  if (v.type != value_type::array || !is_float(v.elem_type))
    p_->fail_key(key, type_msg(v, "array of f32 or f64"));
  return v.floats;
}

std::vector<int64_t> file::get_array_int(std::string_view key) const {
  const value& v = p_->need(key);
  if (v.type != value_type::array || !(is_signed(v.elem_type) || is_unsigned(v.elem_type)))
    p_->fail_key(key, type_msg(v, "array of integers"));
  if (is_signed(v.elem_type)) return v.ints;
  std::vector<int64_t> out;
  out.reserve(v.uints.size());
  for (std::size_t k = 0; k < v.uints.size(); ++k) {
    if (v.uints[k] > uint64_t(std::numeric_limits<int64_t>::max()))
      p_->fail_key(key, "element " + std::to_string(k) + " = " + std::to_string(v.uints[k]) +
                            " does not fit int64");
    out.push_back(int64_t(v.uints[k]));
  }
  return out;
}

const std::vector<tensor_info>& file::tensors() const noexcept {
  return p_->tensors;
}

const tensor_info* file::find_tensor(std::string_view name) const noexcept {
  const auto it = p_->tensor_index.find(name);
  return it == p_->tensor_index.end() ? nullptr : &p_->tensors[it->second];
}

const uint8_t* file::tensor_data(const tensor_info& t) const noexcept {
  return p_->base + p_->data_start + t.offset;
}

const uint8_t* file::data_section() const noexcept {
  return p_->base + p_->data_start;
}

void file::release(const void* p, std::size_t n) const noexcept {
  if (!p_->map || n == 0) return;
  const auto page = uintptr_t(sysconf(_SC_PAGESIZE));
  const auto map_lo = uintptr_t(p_->map);
  const auto map_hi = map_lo + p_->map_size;
  auto lo = uintptr_t(p);
  auto hi = lo + n < lo ? map_hi : lo + n;  // a range wrapping the address space means "to the end"
  lo = lo < map_lo ? map_lo : lo;
  hi = hi > map_hi ? map_hi : hi;
  lo = (lo + page - 1) / page * page;  // only whole pages: neighbours may share the edge pages
  hi = hi == map_hi ? (hi + page - 1) / page * page
                    : hi / page * page;  // the mapping owns its last page
  if (lo < hi) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace qllm::gguf
