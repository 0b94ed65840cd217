// KVSERVE_KERNEL_CHECK(cond, msg): a broken kernel precondition; prints and aborts.
// The kernels depend on nothing above them, so they carry their own minimal check.
#ifndef KVSERVE_KERNELS_CPU_CHECK_H_
#define KVSERVE_KERNELS_CPU_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define KVSERVE_KERNEL_CHECK(cond, msg)                                                      \
  do {                                                                                       \
    if (__builtin_expect(!(cond), 0)) {                                                      \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: %s\n", __FILE__, __LINE__, #cond, msg); \
      std::fflush(stderr);                                                                   \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

#endif  // KVSERVE_KERNELS_CPU_CHECK_H_
