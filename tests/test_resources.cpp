// Default thread counts under cgroup CPU quotas and the memory limits of cgroups (v1 and v2, on
// fake cgroup trees), the thread bound, byte formatting, the bandwidth probe's buffer size.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "omp_compat.hpp"
#include "perf/read_bandwidth.hpp"
#include "qllm/resources.hpp"

using namespace qllm;
namespace fs = std::filesystem;

namespace {
struct tree {
  fs::path root;
  tree() {
    root = fs::temp_directory_path() / ("qllm_cgroup_" + std::to_string(getpid()));
    fs::remove_all(root);
    fs::create_directories(root);
  }
  ~tree() { fs::remove_all(root); }
  void put(const std::string& rel, const std::string& text) const {
    const fs::path p = root / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  std::string r() const { return root.string(); }
};
}  // namespace

TEST_CASE("cgroup v2: cpu.max of the cgroup and its ancestors, smallest wins, rounded up") {
  tree t;
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 0);  // no files: no limit
  t.put("a/b/cpu.max", "max 100000\n");
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 0);
  t.put("a/cpu.max", "200000 100000\n");
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 2);  // the parent's quota applies
  t.put("a/b/cpu.max", "150000 100000\n");
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 2);  // 1.5 CPUs -> 2 threads
  t.put("a/b/cpu.max", "50000 100000\n");
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 1);
  t.put("a/b/cpu.max", "garbage\n");
  CHECK(cgroup_cpu_limit("0::/a/b\n", t.r()) == 2);
}

TEST_CASE("cgroup v2 inside a container: the namespaced root holds the quota") {
  tree t;
  t.put("cpu.max", "400000 100000\n");
  CHECK(cgroup_cpu_limit("0::/\n", t.r()) == 4);
  // the path names the host's cgroup, which the container's mount does not have
  CHECK(cgroup_cpu_limit("0::/system.slice/docker-1.scope\n", t.r()) == 4);
}

TEST_CASE("cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us of the cpu controller") {
  tree t;
  const std::string self = "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n";
  CHECK(cgroup_cpu_limit(self, t.r()) == 0);
  t.put("cpu,cpuacct/docker/x/cpu.cfs_quota_us", "-1\n");
  t.put("cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n");
  CHECK(cgroup_cpu_limit(self, t.r()) == 0);  // -1: unlimited
  t.put("cpu,cpuacct/docker/x/cpu.cfs_quota_us", "300000\n");
  CHECK(cgroup_cpu_limit(self, t.r()) == 3);
  tree u;  // namespaced: only the mount's root exists
  u.put("cpu,cpuacct/cpu.cfs_quota_us", "250000\n");
  u.put("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  CHECK(cgroup_cpu_limit(self, u.r()) == 3);
  tree w;  // cpu mounted alone
  w.put("cpu/docker/x/cpu.cfs_quota_us", "100000\n");
  w.put("cpu/docker/x/cpu.cfs_period_us", "100000\n");
  CHECK(cgroup_cpu_limit("3:cpu:/docker/x\n", w.r()) == 1);
}

TEST_CASE("malformed /proc/self/cgroup text is no limit, never a crash") {
  tree t;
  for (const char* s : {"", "\n", "::", "0:", "garbage", "0::", "x:y:z\n::::\n"})
    CHECK(cgroup_cpu_limit(s, t.r()) == 0);
}

TEST_CASE("OMP_NUM_THREADS counts as a choice only when libgomp would take it") {
  const char* old = std::getenv("OMP_NUM_THREADS");
  const std::string saved = old ? old : "";
  for (const char* v : {"4", "4,2", " 8", "3000"}) {
    setenv("OMP_NUM_THREADS", v, 1);
    CHECK(omp_num_threads_set());
  }
  for (const char* v : {"", "abc", "0", "-3", ",4"}) {
    setenv("OMP_NUM_THREADS", v, 1);
    CHECK_FALSE(omp_num_threads_set());
  }
  if (old) setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  else unsetenv("OMP_NUM_THREADS");
}

TEST_CASE("default and maximum thread counts") {
  CHECK(default_threads() >= 1);
  CHECK(max_threads() >= 64);
  CHECK(default_threads() <= max_threads());
  CHECK(default_threads() <= omp_get_thread_limit());  // no parallel region gets more
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0)
    CHECK(default_threads() == std::min({std::atoi(env), omp_get_thread_limit(), max_threads()}));
}

TEST_CASE("cgroup memory limits: v2 memory.max and v1 memory.limit_in_bytes, smallest wins") {
  tree t;
  CHECK(cgroup_memory_limit("0::/a/b\n", t.r()) == 0);
  t.put("a/b/memory.max", "max\n");
  CHECK(cgroup_memory_limit("0::/a/b\n", t.r()) == 0);
  t.put("a/memory.max", "2147483648\n");
  CHECK(cgroup_memory_limit("0::/a/b\n", t.r()) == 2147483648u);  // the parent's limit applies
  t.put("a/b/memory.max", "1073741824\n");
  CHECK(cgroup_memory_limit("0::/a/b\n", t.r()) == 1073741824u);
  tree u;  // v1: 9223372036854771712 is how "unlimited" reads
  const std::string self = "4:memory:/docker/x\n1:cpu:/docker/x\n";
  u.put("memory/docker/x/memory.limit_in_bytes", "9223372036854771712\n");
  CHECK(cgroup_memory_limit(self, u.r()) == 0);
  u.put("memory/docker/x/memory.limit_in_bytes", "536870912\n");
  CHECK(cgroup_memory_limit(self, u.r()) == 536870912u);
  tree w;  // namespaced v1 mount: the limit sits at the mount's root
  w.put("memory/memory.limit_in_bytes", "268435456\n");
  CHECK(cgroup_memory_limit(self, w.r()) == 268435456u);
  for (const char* s : {"", "::", "0::", "garbage\n"}) CHECK(cgroup_memory_limit(s, t.r()) == 0);
}

TEST_CASE("memory available and byte formatting") {
  CHECK(memory_available_bytes() > (uint64_t(64) << 20));
  CHECK(format_bytes(uint64_t(128) << 30) == "128.0 GiB");
  CHECK(format_bytes(uint64_t(3) << 29) == "1.5 GiB");
  CHECK(format_bytes(uint64_t(512) << 20) == "512.0 MiB");
  CHECK(format_bytes(1000) == "1 KiB");
}

TEST_CASE("the bandwidth probe's buffer: at most an eighth of the memory, at least the smallest probe") {
  const uint64_t eighth = memory_available_bytes() / 8;
  CHECK(perf::probe_bytes(0) == perf::min_probe_bytes);
  CHECK(perf::probe_bytes(std::size_t(-1)) == std::max<uint64_t>(perf::min_probe_bytes, eighth));
  const std::size_t want = std::size_t(96) << 20;  // between the floor and an eighth of >= 768 MiB
  if (eighth >= want) CHECK(perf::probe_bytes(want) == want);
}
