// The C allocator's settings for flipguard's programs.
#pragma once

#include <malloc.h>

namespace flipguard {

/// The forward passes allocate and free tensors of megabytes in a loop; glibc would map and
/// unmap each one, and the page faults cost more system time than the arithmetic takes. Blocks
/// up to 1 GiB come from the heap instead, and freed memory stays with the process up to 1 GiB.
/// flipguard's main and the benchmarks call it first, so that they measure the same program.
/// Returns whether glibc took both settings.
inline bool keep_freed_memory() {
  const bool mmap = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1;
  const bool trim = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return mmap && trim;
}

}  // namespace flipguard
