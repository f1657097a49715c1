#pragma once
/// \file
/// 8-bit dynamic fixed-point quantization (section V-B) and the integer-exact forward pass.
///
/// Arithmetic is emulated the way an integer accelerator does it: integer codes, exact
/// accumulation (products of codes summed without rounding, plus the bias stored at the
/// accumulator's scale 2^-(f_in + f_w)), ReLU, clamp and max pooling on the accumulator, then
/// rounding (round half up, i.e. add half an LSB and shift) and saturation into the next site's
/// format. Average pooling divides the exact sum with the same rounding. An addition shifts its
/// inputs' codes exactly to the finest input format and sums them; a grouped convolution
/// accumulates each group on its own channels. The class scores of the last block are read at
/// accumulator precision, without rounding. docs/quantization.md works examples.
#include <flipguard/fixed_point.hpp>
#include <flipguard/network.hpp>
#include <flipguard/progress.hpp>

#include <array>
#include <limits>
#include <vector>

namespace flipguard {

/// How `calibrate` picks formats.
struct QuantOptions {
  int bits = 8;             ///< word length of activations and weights
  bool is_signed = true;    ///< signedness of activation sites (weights are always signed)
  int64_t calibration_images = 1000;  ///< images of the training set used for calibration
  int min_frac = -16;       ///< search range of the fractional length
  int max_frac = 30;
  /// After the per-tensor choice, move each format by +-1 where that lowers the error of the
  /// whole network: the mean squared difference between the fixed-point and the float class
  /// scores on the calibration images (greedy, in block order, sites then weights).
  bool refine = true;
  /// Phases "calibration" (images) and "refinement" (formats tried), when set.
  ProgressFn progress;
};

/// The fractional length that minimizes the mean squared error between `values` and their
/// fixed-point representation (rounding and saturation) among [min_frac, max_frac]; ties go to
/// the larger range (smaller f).
int best_frac(const torch::Tensor& values, int bits, bool is_signed, int min_frac, int max_frac);

/// best_frac over values that come in parts (batches): the squared error of every candidate
/// fractional length is summed part by part, so the values need not be held at once.
class FracSearch {
 public:
  FracSearch(int bits, bool is_signed, int min_frac, int max_frac);
  void add(const torch::Tensor& values);
  /// The fractional length of least mean squared error so far (bits - 1 while every value is 0).
  int best() const;
  /// The smallest value added (+infinity before any).
  double min() const { return vmin_; }

 private:
  int bits_;
  bool signed_;
  int min_frac_, max_frac_;
  std::vector<double> sse_;  ///< summed squared error per candidate, min_frac first
  double vmax_ = 0, vmin_ = std::numeric_limits<double>::infinity();
};

/// Rounds and saturates real values to codes of a format (as float64 tensor of integers).
torch::Tensor to_codes(const torch::Tensor& values, const FixedPoint& f);

/// Quantization-aware training: the real value of `to_codes(x, f)` (rounding half up,
/// saturation) in x's type, with the straight-through estimator for the gradient: the rounding
/// passes the gradient unchanged, the saturation passes none (the gradient is 1 where x lies in
/// the format's range [min_code, max_code] · 2^-f, 0 outside).
torch::Tensor fake_quantize(const torch::Tensor& x, const FixedPoint& f);

/// Mean squared difference between the fixed-point class scores (in real units) and the float
/// class scores of `net` on `images`: the network's output quantization error.
double output_error(const Network& net, const QuantFormats& formats, const torch::Tensor& images);

/// Picks the formats of every site and weight tensor on calibration images (uint8 pixels).
/// Throws Error when --unsigned is asked for a site that takes negative values.
QuantFormats calibrate(const Network& net, const torch::Tensor& images, const QuantOptions& o);

/// Output channels [begin, end) of a block; end < 0: all of them.
struct ChannelRange {
  int64_t begin = 0, end = -1;
};

/// A network in fixed point: integer weight codes and the integer-exact forward pass.
/// Activation codes are held in float32 tensors of exact integers.
class QuantizedNetwork {
 public:
  QuantizedNetwork(const Network& net, const QuantFormats& formats);

  const Network& network() const { return net_; }
  const QuantFormats& formats() const { return q_; }
  /// Integer weight codes of block b (float32 tensor of exact integers).
  const torch::Tensor& weight_codes(int b) const { return wcodes_[b]; }
  /// Replaces the weight codes of weighted block b (same shape, codes of the block's weight
  /// format); used to emulate faults in the stored weights. Throws Error on a mismatch.
  void set_weight_codes(int b, const torch::Tensor& codes);
  /// Bias codes of block b at the accumulator's scale (float64 tensor of exact integers).
  const torch::Tensor& bias_codes(int b) const { return bcodes_[b]; }
  /// Fractional length of the accumulator of weighted block b: f_in + f_w.
  int acc_frac(int b) const;
  /// Format of the (single or concatenated) input of block b; for an addition, the common format
  /// its inputs are aligned to: the largest of their fractional lengths.
  FixedPoint input_format(int b) const;
  /// Format of the codes block b reads from `j`: a site's, or the input's for kNetworkInput.
  FixedPoint format_of(int j) const;

  /// Images (uint8) to input codes.
  torch::Tensor quantize_input(const torch::Tensor& images) const;
  /// One block on input codes: the output codes of a site, or, for the last block, the exact
  /// class scores in accumulator units (float64).
  torch::Tensor forward_block(int b, const std::vector<torch::Tensor>& inputs) const;
  /// forward_block on a window of block b's output, for recomputing part of a map (the
  /// incremental fault engine). The block's own padding and ceil_mode are not applied: `inputs`
  /// are the input codes over exactly the window the result needs, padding included (zeros
  /// around a convolution's input, -inf around a max pooling's). `post_pad` (top, bottom, left,
  /// right) positions of -inf extend the exact result before a max post pooling, for a window
  /// that reaches past the pre-pooling map. The last block's post pooling is left out: its
  /// exact per-position numerators come back (float64), which sum to the class scores under
  /// global average pooling. Throws Error for an average pooling, which has no window form here.
  /// With `channels`, only those output channels are computed: for a convolution they cover
  /// whole groups and `inputs` hold the input channels of those groups (every channel when it has
  /// one group); for pooling and additions, which act on each channel alone, `inputs` hold the
  /// same channels. Not for fully-connected blocks and concatenations.
  torch::Tensor forward_window(int b, const std::vector<torch::Tensor>& inputs,
                               const std::array<int64_t, 4>& post_pad = {0, 0, 0, 0},
                               ChannelRange channels = {}) const;
  /// The exact accumulator of weighted block b on input codes: products of codes summed, plus
  /// the bias, at fractional length acc_frac(b), before ReLU, pooling and rounding (float64 of
  /// exact integers, N x K x H x W before the block's post pooling; N x K x 1 x 1 for Linear).
  torch::Tensor accumulator(int b, const torch::Tensor& input_codes) const;
  /// Block b's exact result before its post pooling and the rounding into its site (after the
  /// ReLU), as float64 numerators over a positive scale common to the whole tensor: the values
  /// its post pooling acts on (relevance propagation finds the winners of max pooling in them).
  torch::Tensor before_post(int b, const std::vector<torch::Tensor>& inputs) const;
  /// All blocks' outputs from input codes.
  std::vector<torch::Tensor> forward_all(const torch::Tensor& input_codes) const;
  /// Class scores (float64, N x classes, exact, up to a common positive scale) of images.
  torch::Tensor scores(const torch::Tensor& images) const;
  /// The real value of one unit of the class scores that `scores` returns: 2^-f / D for the last
  /// block's accumulator fractional length f and pooling divisor D.
  double score_scale() const;
  /// Top-1 accuracy over a data set, in batches.
  double accuracy(const torch::Tensor& images, const torch::Tensor& labels,
                  int64_t batch = 100) const;

 private:
  Network net_;
  QuantFormats q_;
  std::vector<torch::Tensor> wcodes_, bcodes_;
  std::vector<bool> exact_in_float_;  // float32 accumulation is exact for this block

  /// before_post, with the fractional length and divisor of its numerators.
  /// Without `padded`, convolutions and pooling skip their padding and ceil_mode.
  torch::Tensor exact_before_post(int b, const std::vector<torch::Tensor>& inputs, int& frac,
                                  int64_t& divisor, bool padded = true,
                                  ChannelRange channels = {}) const;
  torch::Tensor accumulate(int b, const torch::Tensor& input_codes, bool padded,
                           ChannelRange channels) const;
  /// The channels checked against block b (all of them as {}); throws Error.
  ChannelRange check_channels(int b, ChannelRange channels) const;
  /// Throws Error where block b's clamp cannot be emulated exactly.
  void check_clamp(int b) const;
  /// Rounded codes of site b clamped to its clamp bounds rounded into its format.
  torch::Tensor clamp_codes(int b, torch::Tensor codes) const;
};

/// Rounded division of integers (float64 tensor of exact integers) by a positive integer:
/// floor(x / d + 1/2), computed exactly in int64.
torch::Tensor round_div(const torch::Tensor& x, int64_t d);

/// Rescales codes from fractional length `from` to format `to`: exact shift, rounding half up,
/// saturation.
torch::Tensor requantize(const torch::Tensor& codes, int from, const FixedPoint& to);

}  // namespace flipguard
