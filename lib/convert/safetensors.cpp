// safetensors reader (mmap, every header field validated before use) and writer.
#include "qllm/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <nlohmann/json.hpp>

#include "qllm/error.hpp"
#include "qllm/formats.hpp"
#include "qllm/reference.hpp"

namespace qllm::safetensors {

using json = nlohmann::json;

int64_t tensor::elements() const noexcept {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const char* dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
  }
  return "?";
}

std::size_t dtype_bytes(dtype t) noexcept { return t == dtype::f32 ? 4 : 2; }

struct file::impl {
  std::string path;
  void* map = nullptr;
  std::size_t map_size = 0;
  const uint8_t* data = nullptr;  // start of the data buffer
  std::vector<tensor> tensors;
  std::unordered_map<std::string, std::size_t> by_name;
  ~impl() {
    if (map) munmap(map, map_size);
  }
};

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw error(errc::bad_format, "safetensors '" + path + "': " + what);
}

// Names from the file go into messages: printable ASCII only, capped.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 200; ++i)
    out += (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  if (s.size() > 200) out += "...";
  return out + "'";
}

dtype parse_dtype(const std::string& path, const std::string& name, const std::string& s) {
  if (s == "F32") return dtype::f32;
  if (s == "F16") return dtype::f16;
  if (s == "BF16") return dtype::bf16;
  static const char* const known[] = {"F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64",
                                      "BOOL", "F8_E4M3", "F8_E5M2"};
  for (const char* k : known)
    if (s == k)
      throw error(errc::unsupported, "safetensors '" + path + "': tensor " + quote(name) + " has dtype " + s +
                                         "; qllm converts F32, F16 and BF16 weights");
  bad(path, "tensor " + quote(name) + " has an unknown dtype " + quote(s));
}

}  // namespace

file::file(std::unique_ptr<impl> p) noexcept : p_(std::move(p)) {}
file::file(file&&) noexcept = default;
file& file::operator=(file&&) noexcept = default;
file::~file() = default;

file file::open(const std::string& path) {
  auto p = std::make_unique<impl>();
  p->path = path;
  // O_NONBLOCK: a FIFO must not block the open; it is then refused as not a regular file
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw error(errc::io, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw error(errc::io, "'" + path + "' is not a regular file");
  }
  const auto size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    bad(path, "file of " + std::to_string(size) + " bytes is too short for a header");
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw error(errc::io, "cannot map '" + path + "': " + std::strerror(errno));
  p->map = m;
  p->map_size = size;
  const auto* base = static_cast<const uint8_t*>(m);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8)
    bad(path, "header length " + std::to_string(n) + " is beyond the end of the file (" + std::to_string(size) +
                  " bytes)");
  if (n > max_header_bytes) bad(path, "header of " + std::to_string(n) + " bytes is larger than 100 MiB");
  if (n < 2 || base[8] != '{') bad(path, "header is not a JSON object");
  json h;
  try {  // nesting is bounded: deep arrays cost memory out of proportion to their bytes
    h = json::parse(base + 8, base + 8 + n, [&](int depth, json::parse_event_t, json&) {
      if (depth > 16) bad(path, "header nests deeper than 16 levels");
      return true;
    });
  } catch (const json::exception& e) {
    bad(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) bad(path, "header is not a JSON object");
  p->data = base + 8 + n;
  const uint64_t data_size = size - 8 - n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) bad(path, "__metadata__ is not an object");
      continue;
    }
    const std::string& name = it.key();
    if (name.empty()) bad(path, "a tensor has an empty name");
    const json& e = *it;
    if (!e.is_object()) bad(path, "entry " + quote(name) + " is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!e.contains(key)) bad(path, "tensor " + quote(name) + " has no " + key);
    if (!e["dtype"].is_string()) bad(path, "tensor " + quote(name) + ": dtype is not a string");
    tensor t;
    t.name = name;
    t.type = parse_dtype(path, name, e["dtype"].get<std::string>());
    const json& shape = e["shape"];
    if (!shape.is_array() || shape.size() > 8) bad(path, "tensor " + quote(name) + ": shape is not an array of at most 8 dims");
    uint64_t count = 1;
    bool overflow = false;
    for (const json& d : shape) {
      if (!d.is_number_unsigned()) bad(path, "tensor " + quote(name) + ": shape has a value that is not a non-negative integer");
      const uint64_t v = d.get<uint64_t>();
      if (v > uint64_t(std::numeric_limits<int64_t>::max())) overflow = true;
      else if (v != 0 && count > (uint64_t(1) << 62) / v) overflow = true;
      else count *= v;
      t.shape.push_back(int64_t(std::min<uint64_t>(v, uint64_t(std::numeric_limits<int64_t>::max()))));
    }
    if (overflow) bad(path, "tensor " + quote(name) + ": shape is too large");
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad(path, "tensor " + quote(name) + ": data_offsets is not [begin, end]");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      bad(path, "tensor " + quote(name) + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                    "] are outside the data (" + std::to_string(data_size) + " bytes; file truncated?)");
    if (count > std::numeric_limits<uint64_t>::max() / dtype_bytes(t.type))
      bad(path, "tensor " + quote(name) + ": shape is too large");
    if (count * dtype_bytes(t.type) != t.end - t.begin)
      bad(path, "tensor " + quote(name) + ": shape needs " + std::to_string(count * dtype_bytes(t.type)) +
                    " bytes but data_offsets cover " + std::to_string(t.end - t.begin));
    p->tensors.push_back(std::move(t));
  }
  std::sort(p->tensors.begin(), p->tensors.end(), [](const tensor& a, const tensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 0; i < p->tensors.size(); ++i) p->by_name.emplace(p->tensors[i].name, i);
  uint64_t at = 0;
  for (const tensor& t : p->tensors) {
    if (t.begin < at) bad(path, "tensor " + quote(t.name) + " overlaps the tensor before it");
    if (t.begin > at) bad(path, "the data has a hole before tensor " + quote(t.name));
    at = t.end;
  }
  if (at != data_size)
    bad(path, "the tensors cover " + std::to_string(at) + " of the " + std::to_string(data_size) + " data bytes");
  return file(std::move(p));
}

const std::string& file::path() const noexcept { return p_->path; }
const std::vector<tensor>& file::tensors() const noexcept { return p_->tensors; }

const tensor* file::find(const std::string& name) const noexcept {
  const auto it = p_->by_name.find(name);
  return it == p_->by_name.end() ? nullptr : &p_->tensors[it->second];
}

const uint8_t* file::data(const tensor& t) const noexcept { return p_->data + t.begin; }

void file::release(const void* p, std::size_t n) const noexcept {
  if (!p_->map || n == 0) return;
  const auto page = uintptr_t(sysconf(_SC_PAGESIZE));
  const auto map_lo = uintptr_t(p_->map), map_hi = map_lo + p_->map_size;
  auto lo = std::max(uintptr_t(p), map_lo);
  auto hi = std::min(uintptr_t(p) + n, map_hi);
  lo = (lo + page - 1) / page * page;
  hi = hi == map_hi ? (hi + page - 1) / page * page : hi / page * page;
  if (lo < hi) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void to_f32(const file& f, const tensor& t, float* out) {
  const uint8_t* src = f.data(t);
  const int64_t n = t.elements();
  if (n == 0) return;  // a zero-size tensor: `out` may be null
  if (t.type == dtype::f32) {
    std::memcpy(out, src, std::size_t(n) * 4);
    return;
  }
  const ggml_type gt = t.type == dtype::f16 ? ggml_type::f16 : ggml_type::bf16;
  constexpr int64_t chunk = 1 << 16;  // the threads widen chunks of 64 Ki values
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += chunk) ref::dequantize_row(gt, src + 2 * i, out + i, std::min(chunk, n - i));
}

void write(const std::string& path, const std::vector<tensor_spec>& specs,
           const std::function<void(std::size_t, float*)>& fill) {
  json h = json::object();
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const tensor_spec& s : specs) {
    uint64_t n = 1;
    for (int64_t d : s.shape) {
      if (d < 0) throw error(errc::invalid_argument, "safetensors writer: negative dim in " + s.name);
      n *= uint64_t(d);
    }
    const uint64_t bytes = n * dtype_bytes(s.type);
    h[s.name] = {{"dtype", dtype_name(s.type)}, {"shape", s.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string head = h.dump();
  head.append((8 - head.size() % 8) % 8, ' ');
  const std::string tmp = path + ".partial";
  std::FILE* fp = std::fopen(tmp.c_str(), "wb");
  if (!fp) throw error(errc::io, "cannot create '" + tmp + "': " + std::strerror(errno));
  bool ok = true;
  try {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(head.size()) >> (8 * i));
    ok = std::fwrite(len, 1, 8, fp) == 8 && std::fwrite(head.data(), 1, head.size(), fp) == head.size();
    std::vector<float> vals;
    std::vector<uint8_t> out;
    for (std::size_t i = 0; ok && i < specs.size(); ++i) {
      int64_t n = 1;
      for (int64_t d : specs[i].shape) n *= d;
      vals.assign(std::size_t(n), 0.0f);
      fill(i, vals.data());
      out.resize(std::size_t(n) * dtype_bytes(specs[i].type));
      for (int64_t j = 0; j < n; ++j) {
        if (specs[i].type == dtype::f32) {
          std::memcpy(out.data() + 4 * j, &vals[std::size_t(j)], 4);
        } else {
          const uint16_t v = specs[i].type == dtype::f16 ? fp32_to_fp16(vals[std::size_t(j)]) : fp32_to_bf16(vals[std::size_t(j)]);
          std::memcpy(out.data() + 2 * j, &v, 2);
        }
      }
      ok = out.empty() || std::fwrite(out.data(), 1, out.size(), fp) == out.size();
    }
  } catch (...) {
    std::fclose(fp);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(fp) != 0) ok = false;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw error(errc::io, "cannot write '" + path + "': " + std::strerror(errno));
  }
}

}  // namespace qllm::safetensors
