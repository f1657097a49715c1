#pragma once
// The cone engine's compiled form of a network: one Stage per block, in the network's
// topological order, with what the propagation needs of it (the blocks it reads, weights laid out
// channels innermost, rounding with the clamp folded in, pruning bound).
// Private to the library.
#include <flipguard/network.hpp>

#include "../../quant/rounding.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace flipguard::cone {

/// One changed code of a site: channel, row, column, new code minus golden code.
struct Entry {
  int32_t c, y, x, d;
};

enum class Kind { Conv, Linear, MaxPool, GapPool, Add };

/// Changes of more codes than this skip the pruning bound (it would not prove them harmless).
constexpr size_t kBoundEntries = 16;

/// One block of the network, with what the kernel needs of it.
struct Stage {
  Kind kind = Kind::Conv;
  bool last = false, relu = false;
  std::vector<int> inputs;  // the blocks it reads (Block::kNetworkInput: the input, never changed)
  // Add: the left shift that aligns each input's codes to the common fractional length.
  std::vector<int> align;
  // Conv: input and output channels split into this many groups; a change of input channel c
  // reaches only the K / groups output channels of c's group (depthwise: just one).
  int groups = 1;
  bool post_max = false, post_gap = false;  // pooling behind a weighted block
  int pk = 1, ps = 1;                       // max pooling window and stride
  Shape in, pre, out;                       // input; output before post pooling; output
  int kernel = 1, stride = 1, pad = 0, dil = 1;
  std::vector<int32_t> wt;  // Conv: [C][k][k][K / groups]; Linear: [C*H*W][K]
  // Convolution whose changes and weights fit int16 (8-bit formats): weights as
  // [k][k][C/2][K][2], two input channels side by side for the paired multiply-add.
  bool packed = false;
  std::vector<int16_t> wt16;
  // The last block as a plain sum: 1x1 convolution (or fully-connected on a 1x1 map) without
  // ReLU whose scores sum every position: the change of score k is sum of d * w[c][k].
  bool summed = false;
  // The last block is summed and reads just this block: its changes go straight into the sums.
  bool into_sum = false;
  // Rounded into its site by a plain shift (divisor 1, shift -30..-1), with or without pooling.
  bool by_shift = false;
  // A shifted site read by a summed last block: the fused step (fused_sum_*) replaces emit when
  // the chunk's accumulators fit int32.
  bool fused = false;
  int64_t delta_max = 0;  // bound on |change of an accumulator|
  // Into the block's site (not for the last block). A clamp (ReLU6, hardtanh) is folded into its
  // saturation bounds: rounding is monotone, so clamping the exact value and rounding gives the
  // rounded value clamped to the rounded bounds.
  Requant rq;
  // Pruning, for a convolution that feeds the last block: per input channel c and class pair
  // (l, k), the bound's weight on |change of a code in channel c|; per pair, the bound's weight
  // on every output position the change may reach.
  bool bound = false;
  int overlap = 1;            // pooling windows a position can belong to
  std::vector<double> lin;    // [C][classes][classes]
  std::vector<double> slack;  // [classes][classes]

  /// A convolution without pooling behind it whose site is rounded by a plain shift: with int32
  /// accumulators, emit rounds its changed codes eight channels at a time.
  bool shifted() const { return kind == Kind::Conv && !post_max && by_shift; }

  /// The pooled rows [first, last] whose max pooling windows hold input row `y` (of `out` rows);
  /// the same for columns.
  std::pair<int64_t, int64_t> windows_of(int64_t y, int64_t out) const {
    return {std::max<int64_t>(0, ceil_div(y - pk + 1, ps)), std::min<int64_t>(out - 1, y / ps)};
  }
};

}  // namespace flipguard::cone
