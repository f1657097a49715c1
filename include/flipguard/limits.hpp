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

/// The largest data set file (IDX, CIFAR-10 binary, after decompression) read whole: 4 GiB.
/// MNIST's training images are 47 MB, a CIFAR-10 batch 30 MB; a device such as /dev/zero, or a
/// gzip bomb, stops here instead of exhausting memory.
constexpr int64_t kMaxDataFileBytes = int64_t{1} << 32;

/// The most pixels of one image in an image folder, read from its header before it is decoded:
/// 2^26 (8192 x 8192). A corrupt header can claim 40,000 x 20,000 pixels in 150 bytes, which
/// libjpeg would decode into gigabytes of grey.
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;

}  // namespace flipguard
