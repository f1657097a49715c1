// The C allocator's settings for flipguard's programs.
#pragma once

#include <malloc.h>

namespace flipguard {

/// The forward passes allocate and free tensors of megabytes in a loop; glibc would map and
/// unmap each one, and the page faults cost more system time than the arithmetic takes. Blocks
/// up to 1 GiB come from the heap instead, and freed memory stays with the process up to 1 GiB.
/// flipguard's main and the benchmarks call it first, so that they measure the same program.
/// Returns whether glibc took both settings. Under AddressSanitizer or ThreadSanitizer, whose
/// allocators replace glibc's and ignore mallopt, there is nothing to set: returns true.
inline bool keep_freed_memory() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#endif
#endif
  const bool mmap = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1;
  const bool trim = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return mmap && trim;
}

}  // namespace flipguard
