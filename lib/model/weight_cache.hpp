// Repacked-weight cache files. The first load of a model writes its repacked weights (and, when
// every matrix is repacked, the embedding table) to one file in a cache directory; later loads,
// in this process or any other, map that file read-only and shared instead of allocating and
// repacking: no fresh memory, no work, and one copy in the page cache for every process.
//
// File: a 4096-byte header, then the weight arena at offset 4096 (64-byte aligned, as the kernels
// need), then the embeddings at the next 4096-byte boundary. The header names a digest of what
// the contents were made from (the source file's size, modification time, tensor table and
// sampled bytes of every tensor; the loader's plan: each matrix's target type and place; the
// panel layout version); a file whose header, digests or size disagree is not used and is
// replaced by the next write.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qllm::weight_cache {

// Bump when any repacked panel layout changes (lib/kernels/kernel_table.hpp): old files then miss.
inline constexpr uint32_t layout_version = 1;

// FNV-1a, 64 bits: identifies contents, not a defence against a crafted file (the cache
// directory is as trusted as the model file itself).
class hasher {
 public:
  void bytes(const void* p, std::size_t n) noexcept {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h_ = (h_ ^ b[i]) * 0x100000001b3ull;
  }
  void u64(uint64_t v) noexcept { bytes(&v, sizeof v); }
  void str(std::string_view s) noexcept {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  uint64_t value() const noexcept { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// The cache directory: `option` unless empty ("none" turns caching off), else the environment
// variable QLLM_CACHE_DIR, else "" (no cache).
std::string directory(const std::string& option);

// What a cache's contents were made from: the source file (identity, tensor table, sampled
// bytes) and the loader's plan (target types, layout). Two plans of one file are two caches.
struct digest {
  uint64_t source = 0;
  uint64_t plan = 0;
};

// "<dir>/<model file name>-<8 hex digits of its canonical path>-<8 + 8 hex digits of the source
// and plan digests>.qllm"
std::string file_path(const std::string& dir, const std::string& model_path, const digest& d);

struct mapped {
  void* base = nullptr;  // the whole file, mapped read-only and shared
  std::size_t size = 0;
  const uint8_t* arena = nullptr;
  const uint8_t* embd = nullptr;  // null when embd_bytes is 0
};

// Maps `path` when it is a cache of `d` with exactly these sizes, a regular file of this user
// that no one else may write. Otherwise nullopt, with `why` empty when there is no such file and
// a reason when there is one that cannot be used.
std::optional<mapped> open(const std::string& path, const digest& d, std::size_t arena_bytes,
                           std::size_t embd_bytes, std::string& why);

// Writes the cache file atomically (a uniquely named temporary file in the same directory, synced,
// renamed), creating the directory if needed. First removes, for the same model path, caches made
// from older files (written before source_ctime_ns, when the model file got its place) and
// temporary files of writers gone for 10 minutes. Returns false with the reason (no space,
// read-only directory, ...); the model works without it. Throws only std::bad_alloc.
bool write(const std::string& path, const digest& d, uint64_t source_ctime_ns, const uint8_t* arena,
           std::size_t arena_bytes, const uint8_t* embd, std::size_t embd_bytes, std::string& why);

}  // namespace qllm::weight_cache
