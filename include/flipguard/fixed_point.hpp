#pragma once
/// \file
/// Dynamic fixed-point formats (section V-B): value = code * 2^-frac, with code a `bits`-bit
/// signed (two's complement) or unsigned integer.
#include <cstdint>
#include <string>
#include <vector>

namespace flipguard {

/// One fixed-point format.
struct FixedPoint {
  int bits = 8;           ///< word length in bits, 2..16
  int frac = 0;           ///< fractional length f: value = code * 2^-f (may be negative)
  bool is_signed = true;  ///< two's complement when true, unsigned otherwise
  /// Range restriction (Ranger; `harden --method ranges`): every reader of an activation site
  /// clamps its codes to [range_lo, range_hi], the range seen on training data. A block writes
  /// its result saturated into that range, and a flipped code is clamped back into it before it
  /// is used. Unrestricted: the whole word range.
  bool restricted = false;
  int64_t range_lo = 0, range_hi = 0;

  /// The word's range: what `bits` bits can hold.
  int64_t min_code() const { return is_signed ? -(int64_t{1} << (bits - 1)) : 0; }
  int64_t max_code() const {
    return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1;
  }
  /// The range a reader accepts: the restriction, or the word's range.
  int64_t lo() const { return restricted ? range_lo : min_code(); }
  int64_t hi() const { return restricted ? range_hi : max_code(); }
  int64_t clamp(int64_t code) const { return code < lo() ? lo() : code > hi() ? hi() : code; }
  double step() const;  ///< 2^-frac
  /// e.g. "s8.5" (signed, 8 bits, f = 5), "u8.4", or "s8.5[0,93]" with a range restriction
  std::string str() const;
  bool operator==(const FixedPoint& o) const {
    return bits == o.bits && frac == o.frac && is_signed == o.is_signed &&
           restricted == o.restricted && (!restricted || (range_lo == o.range_lo && range_hi == o.range_hi));
  }
};

/// The formats of a quantized network. Indices follow Network::blocks.
struct QuantFormats {
  FixedPoint input;                 ///< the network input (pre-processed image)
  std::vector<FixedPoint> act;      ///< output of each block; the last block's entry is unused:
                                    ///< class scores are read at accumulator precision
  std::vector<FixedPoint> weight;   ///< weights of each weighted block (unused for others)
  int bias_bits = 32;               ///< biases are stored at the accumulator's scale
  bool operator==(const QuantFormats& o) const {
    return input == o.input && act == o.act && weight == o.weight && bias_bits == o.bias_bits;
  }
};

}  // namespace flipguard
