#pragma once
/// \file
/// Sizes that flipguard refuses before it allocates for them: a model file, an import option or
/// a campaign that asks for more is an error, not an out-of-memory abort or a hang.
#include <flipguard/network.hpp>

#include <cstdint>
#include <string>

namespace flipguard {

/// The largest side (C, H or W) of a network's input.
constexpr int64_t kMaxInputSide = 65536;
/// The most values in one input image: 2^27 (512 MiB as float32; ImageNet's 3x224x224 is 150,528).
constexpr int64_t kMaxInputValues = int64_t{1} << 27;

/// Throws Error, naming `what` (e.g. "input shape of model 'x.fgm'") and the shape, unless every
/// side is 1..kMaxInputSide and the image has at most kMaxInputValues values.
void check_input_shape(const Shape& s, const std::string& what);

/// The most fault sets one campaign may have: each takes about 100 bytes of memory while the
/// campaign runs (its count, its faults, the checkpoint), so 2^26 take ~6.7 GB. Larger
/// campaigns are split (by sites, or by fault lists) and run one after another.
constexpr int64_t kMaxFaultSets = int64_t{1} << 26;

}  // namespace flipguard
