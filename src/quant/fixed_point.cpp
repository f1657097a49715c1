#include <flipguard/fixed_point.hpp>

#include <cmath>

namespace flipguard {

double FixedPoint::step() const { return std::ldexp(1.0, -frac); }

std::string FixedPoint::str() const {
  std::string s = std::string(is_signed ? "s" : "u") + std::to_string(bits) + "." + std::to_string(frac);
  if (restricted) s += "[" + std::to_string(range_lo) + "," + std::to_string(range_hi) + "]";
  return s;
}

}  // namespace flipguard
