#include "model/weight_cache.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "qllm/resources.hpp"

namespace qllm::weight_cache {

namespace {

constexpr char magic[8] = {'Q', 'L', 'L', 'M', 'P', 'A', 'C', 'K'};
constexpr uint32_t format_version = 1;
constexpr std::size_t page = 4096;

struct header {
  char magic[8];
  uint32_t format;
  uint32_t layout;
  uint64_t source;  // digest of the source file
  uint64_t plan;    // digest of the load plan
  uint64_t arena_offset;
  uint64_t arena_bytes;
  uint64_t embd_offset;
  uint64_t embd_bytes;
  uint64_t file_bytes;
  uint64_t check;  // hasher over the fields above
};
static_assert(sizeof(header) <= page);

uint64_t header_check(const header& h) {
  hasher x;
  x.bytes(&h, offsetof(header, check));
  return x.value();
}

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

header make_header(const digest& d, std::size_t arena_bytes, std::size_t embd_bytes) {
  header h{};
  std::memcpy(h.magic, magic, sizeof magic);
  h.format = format_version;
  h.layout = layout_version;
  h.source = d.source;
  h.plan = d.plan;
  h.arena_offset = page;
  h.arena_bytes = arena_bytes;
  h.embd_offset = embd_bytes ? round_up(page + arena_bytes, page) : 0;
  h.embd_bytes = embd_bytes;
  h.file_bytes = embd_bytes ? h.embd_offset + embd_bytes : page + arena_bytes;
  h.check = header_check(h);
  return h;
}

std::string hex(uint64_t v, int digits) {
  char b[17];
  std::snprintf(b, sizeof b, "%0*llx", digits, static_cast<unsigned long long>(v));
  return b;
}

std::string sys_error(const std::string& what, int err) { return what + ": " + std::strerror(err); }

struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

bool write_all(int fd, const void* p, std::size_t n, int& err) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, b, std::min<std::size_t>(n, std::size_t(64) << 20));
    if (w < 0) {
      if (errno == EINTR) continue;
      err = errno;
      return false;
    }
    b += w;
    n -= std::size_t(w);
  }
  return true;
}

// "<model file name>-<path hash>-": every cache of one model path starts so.
std::string prefix(const std::string& model_path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::weakly_canonical(model_path, ec);  // links resolved
  if (ec) abs = std::filesystem::absolute(model_path, ec).lexically_normal();
  if (ec) abs = model_path;
  hasher h;
  h.str(abs.string());
  // at most 200 bytes of the name: the whole file name stays under NAME_MAX (255)
  return std::filesystem::path(model_path).filename().string().substr(0, 200) + "-" + hex(h.value() >> 32, 8) + "-";
}

// Removes from `dir`, beside the cache file `keep`: caches of the same model path made from an
// older file (another source digest, written no later than the model file got its place: mtime
// <= source_ctime_ns, file times being coarse). Caches of another plan of the same source stay,
// and so does one that a newer file's load wrote while an older one's was still writing. Also
// temporary files whose writer has not written for 10 minutes (killed). Only qllm's names.
void remove_stale(const std::string& dir, const std::string& keep, uint64_t source_ctime_ns) {
  const std::string name = std::filesystem::path(keep).filename().string();
  const std::size_t tail = 21;  // "<16 hex digits>.qllm"
  if (name.size() <= tail) return;
  const std::string pre = name.substr(0, name.size() - tail);
  const std::string source_hex = name.substr(pre.size(), 8);
  const std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);  // closed on bad_alloc too
  if (!d) return;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  while (const dirent* e = ::readdir(d.get())) {
    const std::string n = e->d_name;
    if (n == name || n.compare(0, pre.size(), pre) != 0) continue;
    const std::string full = dir + "/" + n;
    struct stat st {};
    if (::lstat(full.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    const int64_t mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    const bool tmp = n.size() > 16 && n.compare(n.size() - 16, 10, ".qllm.tmp.") == 0;  // "<name>.qllm.tmp.XXXXXX"
    const bool cache = n.size() == name.size() && n.compare(n.size() - 5, 5, ".qllm") == 0;
    if (tmp ? now_ns - mtime_ns > int64_t(600) * 1000000000
            : cache && n.compare(pre.size(), 8, source_hex) != 0 && uint64_t(mtime_ns) <= source_ctime_ns)
      ::unlink(full.c_str());
  }
}

}  // namespace

std::string directory(const std::string& option) {
  if (option == "none") return {};
  if (!option.empty()) return option;
  const char* env = std::getenv("QLLM_CACHE_DIR");
  if (!env || !*env || std::string(env) == "none") return {};
  return env;
}

std::string file_path(const std::string& dir, const std::string& model_path, const digest& d) {
  return dir + "/" + prefix(model_path) + hex(d.source >> 32, 8) + hex(d.plan >> 32, 8) + ".qllm";
}

std::optional<mapped> open(const std::string& path, const digest& d, std::size_t arena_bytes,
                           std::size_t embd_bytes, std::string& why) {
  why.clear();
  fd_guard g;
  // O_NONBLOCK: a FIFO planted at the path must not block the load (it is then refused: not regular)
  g.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (g.fd < 0) {  // no such file (or no such directory): nothing to report, the write will say
    if (errno != ENOENT && errno != ENOTDIR && errno != ENAMETOOLONG) why = sys_error("cannot open " + path, errno);
    return std::nullopt;
  }
  struct stat st {};
  header h{};
  if (::fstat(g.fd, &st) != 0 || !S_ISREG(st.st_mode) || ::pread(g.fd, &h, sizeof h, 0) != ssize_t(sizeof h)) {
    why = path + " is not a complete cache file";
    return std::nullopt;
  }
  // weights others could have written are not run: a file of another user, or one anyone may write
  if (st.st_uid != ::geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    why = path + " belongs to another user or is writable by others";
    return std::nullopt;
  }
  const header want = make_header(d, arena_bytes, embd_bytes);
  if (std::memcmp(h.magic, magic, sizeof magic) != 0 || h.check != header_check(h)) {
    why = path + " is not a qllm cache file (bad header)";
    return std::nullopt;
  }
  if (h.format != want.format || h.layout != want.layout || h.source != want.source || h.plan != want.plan ||
      h.arena_bytes != want.arena_bytes || h.embd_bytes != want.embd_bytes ||
      h.arena_offset != want.arena_offset || h.embd_offset != want.embd_offset ||
      h.file_bytes != want.file_bytes) {
    why = path + " was made from another model file or by another qllm version";
    return std::nullopt;
  }
  if (uint64_t(st.st_size) != h.file_bytes) {
    why = path + " has " + std::to_string(st.st_size) + " bytes, its header says " + std::to_string(h.file_bytes);
    return std::nullopt;
  }
  void* p = ::mmap(nullptr, h.file_bytes, PROT_READ, MAP_SHARED, g.fd, 0);
  if (p == MAP_FAILED) {
    why = sys_error("cannot map " + path, errno);
    return std::nullopt;
  }
  // Page-cache pages of large folios are then mapped 2 MiB at a time where the kernel and file
  // system can (fewer TLB misses while streaming); elsewhere 4 KiB pages. Advice only.
  ::madvise(p, h.file_bytes, MADV_HUGEPAGE);
  mapped m;
  m.base = p;
  m.size = h.file_bytes;
  m.arena = static_cast<const uint8_t*>(p) + h.arena_offset;
  m.embd = embd_bytes ? static_cast<const uint8_t*>(p) + h.embd_offset : nullptr;
  return m;
}

bool write(const std::string& path, const digest& d, uint64_t source_ctime_ns, const uint8_t* arena,
           std::size_t arena_bytes, const uint8_t* embd, std::size_t embd_bytes, std::string& why) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    why = "cannot create " + dir + ": " + ec.message();
    return false;
  }
  remove_stale(dir, path, source_ctime_ns);  // first: what it frees counts for the space check
  const header h = make_header(d, arena_bytes, embd_bytes);
  struct statvfs vfs {};
  if (::statvfs(dir.c_str(), &vfs) == 0 && uint64_t(vfs.f_bavail) * vfs.f_frsize < h.file_bytes) {
    why = dir + " has " + format_bytes(uint64_t(vfs.f_bavail) * vfs.f_frsize) + " free, the cache needs " +
          format_bytes(h.file_bytes);
    return false;
  }
  // A file over the size limit (ulimit -f) would not fail with an error: the write raises SIGXFSZ,
  // which ends the process. Checked first instead.
  struct rlimit fsz {};
  if (::getrlimit(RLIMIT_FSIZE, &fsz) == 0 && fsz.rlim_cur != RLIM_INFINITY && fsz.rlim_cur < h.file_bytes) {
    why = "the file size limit (ulimit -f) is " + format_bytes(uint64_t(fsz.rlim_cur)) + ", the cache needs " +
          format_bytes(h.file_bytes);
    return false;
  }
  // a name no other writer (thread, process, container) can have; removed on every failure
  std::string tmp = path + ".tmp.XXXXXX";
  struct tmp_guard {
    std::string* name = nullptr;
    ~tmp_guard() {
      if (name) ::unlink(name->c_str());
    }
  } cleanup;
  fd_guard g;
  g.fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (g.fd < 0) {
    why = sys_error("cannot create a file in " + dir, errno);
    return false;
  }
  cleanup.name = &tmp;
  int err = 0;
  // owner only: no other user's process would map it (open() refuses their files), and the
  // weights of a private model must not become readable to others through their cache
  bool ok = ::fchmod(g.fd, 0600) == 0 || (err = errno, false);
  std::vector<uint8_t> head(page, 0);
  std::memcpy(head.data(), &h, sizeof h);
  ok = ok && write_all(g.fd, head.data(), page, err) && write_all(g.fd, arena, arena_bytes, err);
  if (ok && embd_bytes) {
    const std::vector<uint8_t> pad(page, 0);
    ok = write_all(g.fd, pad.data(), h.embd_offset - (page + arena_bytes), err) &&
         write_all(g.fd, embd, embd_bytes, err);
  }
  if (ok && ::fdatasync(g.fd) != 0) ok = false, err = errno;
  if (!ok) {
    why = sys_error("cannot write " + tmp, err);
    return false;
  }
  ::close(std::exchange(g.fd, -1));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    why = sys_error("cannot rename " + tmp, errno);
    return false;
  }
  cleanup.name = nullptr;
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);  // the rename itself survives a crash
    ::close(dfd);
  }
  return true;
}

}  // namespace qllm::weight_cache
