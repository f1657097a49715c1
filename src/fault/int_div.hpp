#pragma once
// Integer division rounding towards minus or plus infinity, for window arithmetic of the engines.
#include <cstdint>

namespace flipguard {

/// floor(a / b) for b > 0.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// ceil(a / b) for b > 0.
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

}  // namespace flipguard
