#include "args.hpp"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/resources.hpp"

namespace qllm::cli {

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
    throw error(errc::invalid_argument, flag + ": '" + text + "' is not an integer in [" +
                                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

double parse_float(const std::string& flag, const std::string& text, double lo, double hi) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !(v >= lo && v <= hi))
    throw error(errc::invalid_argument, flag + ": '" + text + "' is not a number in [" + std::to_string(lo) + ", " +
                                            std::to_string(hi) + "]");
  return v;
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, int64_t lo,
                                    int64_t hi) {
  std::vector<int64_t> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    out.push_back(parse_int(flag, text.substr(start, comma - start), lo, hi));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string next_value(int argc, char** argv, int& i) {
  if (i + 1 >= argc)
    throw error(errc::invalid_argument, std::string(argv[i]) + ": missing value");
  return argv[++i];
}

bool is_help(const std::string& arg) { return arg == "-h" || arg == "--help"; }

int print_help(const char* text) {
  std::fputs(text, stdout);
  return 0;
}

int64_t peak_rss_bytes() {
  // VmHWM, which reset_peak_rss() can lower; ru_maxrss where /proc is not there
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    long long kb = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
    std::fclose(f);
    if (kb >= 0) return int64_t(kb) * 1024;
  }
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;
}

bool reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

void print_progress(std::size_t done, std::size_t total, uint64_t bytes_done, uint64_t bytes_total, double seconds) {
  const double mbs = seconds > 0 ? double(bytes_done) / 1e6 / seconds : 0.0;
  const double eta = bytes_done ? seconds * double(bytes_total - bytes_done) / double(bytes_done) : 0.0;
  std::fprintf(stderr, "\r[%zu/%zu tensors] %s of %s, %.0f MB/s, ETA %.0f s   ", done, total,
               format_bytes(bytes_done).c_str(), format_bytes(bytes_total).c_str(), mbs, eta);
  if (done == total) std::fputc('\n', stderr);
}

namespace {
bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace

default_model find_default_model() {
  default_model d;
  if (const char* env = std::getenv("QLLM_DEFAULT_MODEL"); env && *env) {
    d.path = env;
    d.origin = "QLLM_DEFAULT_MODEL";
    d.looked = d.path + (is_file(d.path) ? "" : " (QLLM_DEFAULT_MODEL, not a regular file)");
    if (!is_file(d.path)) d.path.clear();
    return d;
  }
  // Where this executable is: an install finds the model relative to it (the prefix can move);
  // a binary of the build tree uses the source tree's model and nothing installed.
  std::string exe_dir;
  std::string exe(4096, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (n > 0) {
    exe.resize(std::size_t(n));
    exe_dir = exe.substr(0, exe.find_last_of('/'));
  }
  const std::string build_root = QLLM_BUILD_ROOT;
  const bool in_build_tree = !exe_dir.empty() && exe_dir.compare(0, build_root.size(), build_root) == 0 &&
                             (exe_dir.size() == build_root.size() || exe_dir[build_root.size()] == '/');
  std::vector<std::pair<std::string, const char*>> places;
  if (in_build_tree) {
    places.emplace_back(QLLM_MODEL_SOURCE_DIR "/" QLLM_DEFAULT_MODEL_FILE, "source tree");
  } else {
    // <prefix>/<bindir>/qllm → <prefix>/<datadir>/qllm/ (bindir, datadir relative to the prefix)
    const std::string bindir = QLLM_INSTALL_BINDIR;
    if (!exe_dir.empty() && exe_dir.size() > bindir.size() &&
        exe_dir.compare(exe_dir.size() - bindir.size(), bindir.size(), bindir) == 0 &&
        exe_dir[exe_dir.size() - bindir.size() - 1] == '/')
      places.emplace_back(exe_dir.substr(0, exe_dir.size() - bindir.size()) + QLLM_INSTALL_DATADIR "/qllm/" QLLM_DEFAULT_MODEL_FILE,
                          "installed");
    places.emplace_back(QLLM_MODEL_INSTALL_DIR "/" QLLM_DEFAULT_MODEL_FILE, "installed");
  }
  for (const auto& [p, origin] : places) {
    d.looked += (d.looked.empty() ? "" : ", ") + p;
    if (d.path.empty() && is_file(p)) {
      d.path = p;
      d.origin = origin;
    }
  }
  return d;
}

std::string model_or_default(const std::string& path, const char* usage) {
  if (!path.empty()) return path;
  const default_model d = find_default_model();
  if (d.path.empty())
    throw error(errc::invalid_argument, "no -m MODEL given and no default model found (looked at " + d.looked +
                                            "); usage: " + usage);
  return d.path;
}

}  // namespace qllm::cli
