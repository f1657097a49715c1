#include <flipguard/fixed_point.hpp>

#include <cmath>

namespace flipguard {

double FixedPoint::step() const { return std::ldexp(1.0, -frac); }

std::string FixedPoint::str() const {
  return std::string(is_signed ? "s" : "u") + std::to_string(bits) + "." + std::to_string(frac);
}

}  // namespace flipguard
