// Thread counts (the affinity mask, cgroup CPU quotas, the accepted maximum) and the memory
// this process can have (physical memory, cgroup memory limits), cgroup v1 and v2.
#include "omp_compat.hpp"
#include "qllm/resources.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace qllm {
namespace {

bool read_text(const std::string& path, std::string& out) {
  std::ifstream f(path);
  if (!f) return false;
  std::ostringstream s;
  s << f.rdbuf();
  out = s.str();
  return true;
}

// ceil(quota / period) as CPUs, 0 when unlimited or unreadable.
int cpus_of(double quota, double period) {
  if (!(quota > 0) || !(period > 0)) return 0;
  const double n = std::ceil(quota / period);
  return n >= 1 ? (n > 1e6 ? 1000000 : int(n)) : 1;
}

// The directory chain from `dir` up to `root` (both included).
template <class F>
void for_ancestors(const std::string& root, std::string rel, F&& f) {
  while (true) {
    f(root + rel);
    if (rel.empty() || rel == "/") return;
    const auto slash = rel.find_last_of('/');
    rel = slash == std::string::npos ? "" : rel.substr(0, slash);
  }
}

int min_limit(int a, int b) { return a == 0 ? b : (b == 0 ? a : std::min(a, b)); }

int v2_limit(const std::string& root, const std::string& rel) {
  int best = 0;
  for_ancestors(root, rel, [&](const std::string& dir) {
    std::string text;
    if (!read_text(dir + "/cpu.max", text)) return;
    std::istringstream s(text);
    std::string quota;
    double period = 0;
    if (!(s >> quota >> period) || quota == "max") return;
    char* end = nullptr;
    const double q = std::strtod(quota.c_str(), &end);
    if (end == quota.c_str()) return;
    best = min_limit(best, cpus_of(q, period));
  });
  return best;
}

// The smallest number in `file` of `rel` and its ancestors under `root` ("max" and values of
// 2^60 or more, as v1 writes "unlimited", are no limit), or 0.
uint64_t smallest_in(const std::string& root, const std::string& rel, const char* file) {
  uint64_t best = 0;
  for_ancestors(root, rel, [&](const std::string& dir) {
    std::string text;
    if (!read_text(dir + "/" + file, text)) return;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (end == text.c_str() || v == 0 || v >= (1ull << 60)) return;
    best = best == 0 ? v : std::min<uint64_t>(best, v);
  });
  return best;
}

int v1_limit(const std::string& root, const std::string& rel) {
  int best = 0;
  bool any = false;
  for (const char* ctl : {"/cpu,cpuacct", "/cpuacct,cpu", "/cpu"}) {
    const std::string base = root + ctl;
    auto at = [&](const std::string& dir) {
      std::string q, p;
      if (!read_text(dir + "/cpu.cfs_quota_us", q) || !read_text(dir + "/cpu.cfs_period_us", p)) return;
      any = true;
      best = min_limit(best, cpus_of(std::strtod(q.c_str(), nullptr), std::strtod(p.c_str(), nullptr)));
    };
    for_ancestors(base, rel, at);
    if (!any) at(base);  // inside a container the mount's root is the process's own cgroup
    if (any) break;
  }
  return best;
}

// Calls f(v2, controllers, path) for each line "hierarchy-ID:controller-list:path" of
// /proc/self/cgroup; v2 marks the unified hierarchy's line "0::path". "/" is passed as "".
template <class F>
void for_cgroup_lines(const std::string& proc_self_cgroup, F&& f) {
  std::istringstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    const auto a = line.find(':'), b = line.find(':', a == std::string::npos ? 0 : a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (path == "/") path.clear();
    f(line.compare(0, a, "0") == 0 && controllers.empty(), controllers, path);
  }
}

bool has_controller(const std::string& controllers, const char* name) {
  std::istringstream cs(controllers);
  std::string c;
  bool found = false;
  while (std::getline(cs, c, ',')) found |= c == name;
  return found;
}

}  // namespace

int cgroup_cpu_limit(const std::string& proc_self_cgroup, const std::string& mount_root) noexcept {
  try {
    int best = 0;
    for_cgroup_lines(proc_self_cgroup, [&](bool v2, const std::string& controllers, const std::string& path) {
      if (v2) {
        // unified (v2) mount, or hybrid systems' /sys/fs/cgroup/unified
        for (const std::string& root : {mount_root, mount_root + "/unified"}) {
          int n = v2_limit(root, path);
          if (n == 0 && !path.empty()) n = v2_limit(root, "");  // namespaced mount
          best = min_limit(best, n);
        }
      } else if (has_controller(controllers, "cpu")) {
        best = min_limit(best, v1_limit(mount_root, path));
      }
    });
    return best;
  } catch (...) {
    return 0;
  }
}

uint64_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& mount_root) noexcept {
  try {
    uint64_t best = 0;
    auto take = [&](uint64_t v) { best = v == 0 ? best : (best == 0 ? v : std::min(best, v)); };
    for_cgroup_lines(proc_self_cgroup, [&](bool v2, const std::string& controllers, const std::string& path) {
      if (v2) {
        for (const std::string& root : {mount_root, mount_root + "/unified"}) {
          uint64_t v = smallest_in(root, path, "memory.max");
          if (v == 0 && !path.empty()) v = smallest_in(root, "", "memory.max");
          take(v);
        }
      } else if (has_controller(controllers, "memory")) {
        const std::string base = mount_root + "/memory";
        uint64_t v = smallest_in(base, path, "memory.limit_in_bytes");
        if (v == 0 && !path.empty()) v = smallest_in(base, "", "memory.limit_in_bytes");
        take(v);
      }
    });
    return best;
  } catch (...) {
    return 0;
  }
}

uint64_t memory_available_bytes() noexcept {
  static const uint64_t n = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t phys = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
    std::string text;
    const uint64_t cg = read_text("/proc/self/cgroup", text) ? cgroup_memory_limit(text, "/sys/fs/cgroup") : 0;
    if (phys == 0) return cg;
    return cg == 0 ? phys : std::min(phys, cg);
  }();
  return n;
}

std::string format_bytes(uint64_t n) {
  char buf[32];
  if (n >= (uint64_t(1) << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(n) / double(1 << 30));
  else if (n >= (uint64_t(1) << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", double(n) / double(1 << 20));
  else std::snprintf(buf, sizeof buf, "%llu KiB", (unsigned long long)((n + 1023) / 1024));
  return buf;
}

bool omp_num_threads_set() noexcept {
  // as libgomp reads it: a positive number first ("4" or "4,2"); anything else is ignored
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (!env) return false;
  while (*env == ' ' || *env == '\t') ++env;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  return end != env && n > 0;
}

int default_threads() noexcept {
  static const int n = [] {
    // OMP_THREAD_LIMIT caps every parallel region's team, whatever num_threads asks for
    const int omp = std::min({std::max(1, omp_get_max_threads()), std::max(1, omp_get_thread_limit()), max_threads()});
    if (omp_num_threads_set()) return omp;  // an explicit choice is kept (within the bound)
    std::string text;
    if (!read_text("/proc/self/cgroup", text)) return omp;
    const int quota = cgroup_cpu_limit(text, "/sys/fs/cgroup");
    return quota > 0 ? std::min(omp, quota) : omp;
  }();
  return n;
}

int max_threads() noexcept {
  const long conf = sysconf(_SC_NPROCESSORS_CONF);
  const long n = conf > 0 ? conf : 1;
  return int(std::min<long>(std::max<long>(64, 4 * n), 1 << 16));
}

}  // namespace qllm
