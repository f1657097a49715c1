#pragma once
// The rounding rule of flipguard's integer arithmetic, in one place: the quantized forward pass
// (quantize.cpp, on tensors) and the cone engine (src/fault/cone, one accumulator at a time) both
// round with round_half_up_div, so the two cannot drift apart. Private to the library.
#include <flipguard/error.hpp>
#include <flipguard/fixed_point.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <torch/torch.h>

namespace flipguard {

/// floor(a / b) for b > 0.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// ceil(a / b) for b > 0.
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

/// floor(a / b) elementwise for an integer tensor a and b > 0.
inline torch::Tensor floor_div(const torch::Tensor& a, int64_t b) {
  return torch::div(a, b, "floor");
}

/// num / d rounded to the nearest integer, half up (towards plus infinity), exactly, for d > 0:
/// floor((2 num + d) / (2 d)). For an int64_t or an integer tensor.
template <class T>
T round_half_up_div(const T& num, int64_t d) {
  return floor_div(num * 2 + d, 2 * d);
}

/// Rounding and saturation of an exact numerator into a site's format, as QuantizedNetwork's
/// forward pass does it (quantize.cpp's rescale and saturate): round half up of
/// num * 2^shift / divisor, then clamp into [f.lo(), f.hi()]. One value at a time, in int64.
struct Requant {
  int shift = 0;
  int64_t divisor = 1;
  int64_t lo = 0, hi = 0;

  Requant() = default;
  Requant(int shift_, int64_t divisor_, const FixedPoint& f)
      : shift(shift_), divisor(divisor_), lo(f.lo()), hi(f.hi()) {
    // Wider shifts could overflow the int64 numerator of round_half_up_div.
    if (shift > 24 || shift < -40)
      fail("cone engine: rescaling by 2^", shift, " is outside the supported -40..24");
  }
  int64_t operator()(int64_t num) const {
    int64_t v;
    if (divisor == 1 && shift < 0) {
      // round_half_up_div(num, 2^-shift) as an add and an arithmetic (flooring) shift.
      v = (num + (int64_t{1} << (-shift - 1))) >> -shift;
    } else if (shift >= 0) {
      const int64_t x = num * (int64_t{1} << shift);
      v = divisor == 1 ? x : round_half_up_div(x, divisor);
    } else {
      v = round_half_up_div(num, divisor << -shift);
    }
    return std::clamp(v, lo, hi);
  }
  /// The factor 2^shift / divisor that rounding approximates.
  double scale() const { return std::ldexp(1.0, shift) / static_cast<double>(divisor); }
};

}  // namespace flipguard
