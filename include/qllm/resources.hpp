// What this process may use: threads (the default and the most accepted) and memory.
#pragma once
#include <cstdint>
#include <string>

namespace qllm {

// The CPU limit of a cgroup CPU quota, as a whole number of CPUs (quota / period rounded up),
// or 0 when there is none. `proc_self_cgroup` is the text of /proc/self/cgroup; `mount_root`
// is where the cgroup file systems are mounted ("/sys/fs/cgroup"). Reads cgroup v2 `cpu.max`
// of the process's cgroup and its ancestors, and cgroup v1 `cpu.cfs_quota_us` /
// `cpu.cfs_period_us` of the `cpu` controller; the smallest limit wins. Never throws.
int cgroup_cpu_limit(const std::string& proc_self_cgroup, const std::string& mount_root) noexcept;

// The default thread count: OMP_NUM_THREADS when it holds a positive number, else the CPUs of
// the affinity mask capped by the cgroup CPU quota (a container given --cpus=2 on a 64-core host
// gets 2); never above OMP_THREAD_LIMIT (no parallel region gets more) or max_threads().
// Computed once.
int default_threads() noexcept;
// Whether OMP_NUM_THREADS holds a number libgomp takes (a positive integer first).
bool omp_num_threads_set() noexcept;

// The most threads a model or context accepts: max(64, 4 x the CPUs of the machine).
// More would only oversubscribe, and libgomp exits the whole process when it cannot create a
// thread, so a larger request is an invalid_argument error instead.
int max_threads() noexcept;

// The memory limit of the process's cgroup and its ancestors in bytes (cgroup v2 `memory.max`,
// v1 `memory.limit_in_bytes`; the smallest wins), or 0 when there is none. Never throws.
uint64_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& mount_root) noexcept;

// The memory this process can have: the machine's physical memory, capped by the cgroup memory
// limit. Allocations planned beyond it (a KV cache for n_ctx = 1,000,000, say) are refused up
// front with the numbers instead of failing, or swapping, halfway.
uint64_t memory_available_bytes() noexcept;

// "24.0 GiB", "512.0 MiB", "12 KiB": for messages.
std::string format_bytes(uint64_t n);

}  // namespace qllm
