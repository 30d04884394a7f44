// OpenMP's functions when the build has OpenMP; a one-thread stand-in when it is built without
// (-Dopenmp=disabled: the ThreadSanitizer and fuzzing builds), where the pragmas are ignored.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() noexcept { return 1; }
inline int omp_get_thread_num() noexcept { return 0; }
inline int omp_get_num_threads() noexcept { return 1; }
inline int omp_get_thread_limit() noexcept { return 1; }
#endif

// Ends the calling thread's OpenMP team of idle workers (libgomp: its thread pool, joined here),
// unless the thread is inside a parallel region; its next parallel region starts a new one.
// libgomp lets idle workers spin only while the threads it manages are no more than the CPUs,
// and every thread that has run a parallel region keeps its workers. A model loaded on one
// thread and run on another (the engine's thread, a server, a program's worker thread) left two
// teams on a 2-core machine: the computing team's workers then slept between parallel regions
// and were woken for each (90k context switches in 160 tokens of a 7B model; one stream of
// `qllm bench --parallel 1` decoded 14-42 % slower than the same model on the loading thread).
// qllm calls it where a thread is done with its parallel work: at the end of model::load and of
// session::generate, before the engine starts its thread, after a server's embeddings request.
// omp_pause_resource_all, not omp_pause_resource(kind, device): libgomp's pause of the host
// alone asks for the device count first, which loads the offload plugins.
inline void release_omp_workers() noexcept {
#ifdef _OPENMP
  omp_pause_resource_all(omp_pause_soft);
#endif
}

// release_omp_workers() when the scope ends, by return or by exception.
struct release_omp_workers_at_exit {
  release_omp_workers_at_exit() = default;
  release_omp_workers_at_exit(const release_omp_workers_at_exit&) = delete;
  release_omp_workers_at_exit& operator=(const release_omp_workers_at_exit&) = delete;
  ~release_omp_workers_at_exit() { release_omp_workers(); }
};
