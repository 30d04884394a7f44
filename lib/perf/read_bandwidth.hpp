// The best memory read bandwidth this machine gives: the roofline that decoding (every weight byte
// read once per token) is quoted against by `qllm bench` and bench_kernels. Measured the way
// ../shared/tools/membw does, so that both agree with it: anonymous memory far beyond any cache, on
// transparent huge pages, every page touched before timing, each thread summing its own
// contiguous slice with four independent 256-bit accumulators, best of several passes. A weaker
// probe (4 KiB pages, one accumulator, one pass) reads low and flatters the kernels.
#pragma once
#include <cstddef>
#include <span>
#include <vector>

namespace qllm::perf {

// GB/s (1e9 bytes per second) for each thread count in `threads`, over one buffer of `bytes`
// (rounded down to 128-byte lines; at least min_probe_bytes), best of `passes` (>= 1) each. Throws
// qllm::error (errc::out_of_memory) when the buffer cannot be mapped, errc::invalid_argument for
// an empty list, a thread count outside 1..1024 or fewer than one pass.
inline constexpr std::size_t min_probe_bytes = std::size_t(64) << 20;
std::vector<double> best_read_bandwidth(std::span<const int> threads, std::size_t bytes, int passes);

// The probe buffer for a wish of `request` bytes: at most an eighth of the memory this process may
// have (qllm::memory_available_bytes, so that the probe beside a loaded model is not what runs the
// machine out of memory), at least min_probe_bytes.
std::size_t probe_bytes(std::size_t request) noexcept;

}  // namespace qllm::perf
