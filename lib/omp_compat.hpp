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
