#pragma once
/// \file
/// Training from scratch with seeded, resumable runs.
///
/// Convolutions followed by an activation (ReLU, clamp), and convolutions that an addition reads
/// (a residual branch, a projection shortcut), are trained with batch normalization behind the
/// convolution; the normalization is folded into the convolution's weights and bias whenever the
/// network is evaluated or saved, so the model that comes out has exactly the layers of its
/// architecture (Table I has no normalization layers).
#include <flipguard/data.hpp>
#include <flipguard/network.hpp>
#include <flipguard/quant.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace flipguard {

/// Where a training run stands, after each batch.
struct TrainProgress {
  int epoch = 0, epochs = 0;        ///< 1-based epoch, of all
  int64_t batch = 0, batches = 0;   ///< 1-based batch of the epoch, of all in one epoch
  double loss = 0, accuracy = 0;    ///< means over the epoch so far
  double lr = 0;                    ///< learning rate of the batch
};

/// Options of one training run; every field has the default the CLI shows.
struct TrainOptions {
  int epochs = 10;
  int64_t batch_size = 128;
  double lr = 0.05;            ///< peak learning rate of SGD with Nesterov momentum
  double momentum = 0.9;
  double weight_decay = 5e-4;
  double warmup_epochs = 1.0;  ///< linear warm-up, then cosine decay to 0
  bool augment = false;        ///< random crop of the zero-padded image (+ horizontal flip)
  int augment_pad = 4;         ///< padding of the random crop: shifts of up to this many pixels
  bool augment_flip = true;    ///< random horizontal flips (not for digits)
  /// Random rotation (uniform in ±augment_degrees) and scaling (uniform in 1 ± augment_scale) of
  /// every image about its centre, after the crop; 0 and 0: none. For digits, where a shift alone
  /// changes little for a network with global pooling (on MNIST's Table I network it lowered
  /// the test accuracy: models/README.md).
  double augment_degrees = 0;
  double augment_scale = 0;
  /// Whether a rotation or a scaling is drawn (either bound set).
  bool rotates() const { return augment_degrees != 0 || augment_scale != 0; }
  bool batchnorm = true;       ///< train with batch normalization, folded when done
  uint64_t seed = 1;
  std::string checkpoint;      ///< checkpoint written after every epoch (empty: none)
  bool resume = false;         ///< continue from `checkpoint`
  /// A warm restart (Loshchilov & Hutter, SGDR, 2017): start from the weights and batch
  /// normalization of this training checkpoint (an earlier run's `checkpoint`, of the same
  /// architecture and normalization) with a fresh optimizer and learning-rate schedule; the
  /// epochs count from 0 again. Empty: from the architecture's random initialization.
  std::string init;
  int log_every = 50;          ///< batches between progress lines (0: none)
  /// Called after every batch (a progress display), when set.
  std::function<void(const TrainProgress&)> progress;
  /// Quantization-aware training (fine-tuning a quantized model): the forward pass rounds the
  /// input, every weight tensor and every activation site into these formats (fake_quantize:
  /// the gradient passes the rounding unchanged and is 0 where a value saturates), biases at
  /// their accumulator's scale; the class scores stay at accumulator precision. The formats
  /// stay fixed; the test accuracy reported is the integer-exact one.
  /// Needs batchnorm = false.
  std::optional<QuantFormats> quantized;
  /// Knowledge distillation: when set, the loss is the Kullback-Leibler divergence from this
  /// network's class probabilities (its float pass, softened by `temperature`) to the trained
  /// network's, times temperature², instead of the cross-entropy with the labels. For
  /// fine-tuning on few images (feature optimization of a pre-trained network on a sample):
  /// the target is the original network's behaviour, not labels that a few images would let the
  /// network memorize. For training from scratch (`train --teacher`): a larger network's
  /// answers teach a small one more than the labels do (Hinton et al., 2015). The teacher takes
  /// the student's (augmented) batch, renormalized to its own input normalization. The
  /// accuracy logged is still against the labels.
  std::optional<Network> teacher;
  double temperature = 1;
};

/// The names of the augmentation presets: auto, on, shift, affine, off.
const std::vector<std::string>& augment_modes();

/// Sets the augmentation fields of `o` (augment, augment_pad, augment_flip, augment_degrees,
/// augment_scale) to the preset `mode` for the data set `data_name`: on is random 4-pixel crops
/// and flips (the TrainOptions defaults); shift is crops of up to 2 pixels without flips (for
/// digits); affine is the shift, then a rotation of up to ±10° and a scaling by 0.9 to 1.1; off
/// is none; auto is on for cifar10 and off otherwise. Throws Error for an unknown mode, listing
/// the known ones.
void set_augment(const std::string& mode, const std::string& data_name, TrainOptions& o);

/// Progress of a training run, reported after every epoch.
struct EpochReport {
  int epoch = 0;  ///< 1-based
  double train_loss = 0, train_accuracy = 0, test_accuracy = 0, seconds = 0;
};

/// Trains `net` in place on `train`, evaluates on `test` after each epoch. Progress lines go to
/// `log` (stderr in the CLI). Returns the report of the last epoch.
EpochReport train_network(Network& net, const Dataset& train, const Dataset& test,
                          const TrainOptions& options,
                          const std::function<void(const std::string&)>& log);

/// Knowledge-distillation loss (TrainOptions::teacher): the mean over the batch of
/// KL(softmax(teacher / T) || softmax(student / T)) · T², from class scores N x classes; no
/// gradient reaches the teacher.
torch::Tensor distillation_loss(const torch::Tensor& student, const torch::Tensor& teacher,
                                double temperature);

/// `x`, pre-processed as `from` pre-processes images (Network::preprocess, then perhaps
/// augmented), as `to` pre-processes them: `from`'s per-channel mean and standard deviation
/// undone, `to`'s applied; `x` itself when they agree. What a distillation teacher with its own
/// normalization is given.
torch::Tensor renormalize(const torch::Tensor& x, const Network& from, const Network& to);

/// The forward pass of quantization-aware training (TrainOptions::quantized): the pre-processed
/// input `x`, every weight tensor, bias and site fake-quantized into `formats`, the class scores
/// (N x classes) at full precision. Its value is the integer-exact forward pass computed in
/// float32; gradients reach the network's weights through the straight-through estimator.
torch::Tensor quantized_training_forward(const Network& net, const QuantFormats& formats,
                                         const torch::Tensor& x);

/// Augments a batch (N x C x H x W, float): each image is cropped at a random offset from its
/// `pad`-pixel zero-padded copy (a shift of up to `pad` pixels each way) and, when `flip`,
/// mirrored horizontally with probability 1/2. Draws from `gen` only.
torch::Tensor augment_batch(const torch::Tensor& x, torch::Generator& gen, int pad, bool flip);

/// Rotates image i of a batch (N x C x H x W, float) by degrees[i] (counter-clockwise as the
/// image is shown, rows downwards) and scales it by scale[i] about its centre, with bilinear
/// interpolation and zeros outside the image (zero is the background of a preprocessed digit
/// and the mean of a preprocessed CIFAR-10 image). degrees 0 and scale 1 give the image back.
torch::Tensor rotate_scale(const torch::Tensor& x, const torch::Tensor& degrees,
                           const torch::Tensor& scale);

/// rotate_scale with angles uniform in ±max_degrees and scales uniform in 1 ± max_scale, drawn
/// from `gen` only.
torch::Tensor random_rotate_scale(const torch::Tensor& x, torch::Generator& gen,
                                  double max_degrees, double max_scale);

}  // namespace flipguard
