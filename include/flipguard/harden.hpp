#pragma once
/// \file
/// Resilience optimization of the network itself (section IV of the paper).
///
/// Architectural optimization (IV-A, V-E1): an activation site with far fewer neurons than the
/// others is a bottleneck: each of its neurons carries a large share of the information, so one
/// flipped bit there does the most harm. Where such a site is the output of a global average
/// pooling that is read only by a 1x1 convolution or a fully-connected block with no ReLU and no
/// pooling of its own, the pooling is moved behind that block. Both operations are linear, so
/// they commute and the float function is unchanged, while the pooling's small output is no
/// longer stored: the larger feature map before it is.
#include <flipguard/data.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/network.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/train.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace flipguard {

/// Options of the architectural optimization.
struct ArchitectureOptions {
  /// A site is a bottleneck when it has fewer than `bottleneck_ratio` times the neurons of the
  /// median site (the median of the sites' neuron counts, the lower one for an even count).
  double bottleneck_ratio = 1.0 / 16;
};

/// A bottleneck site and what became of it.
struct Bottleneck {
  int block = -1;           ///< block index in the original network
  std::string name;         ///< block name
  Shape shape;              ///< site shape
  int64_t median_neurons = 0;  ///< neurons of the median site, for comparison
  bool fixed = false;       ///< the pooling was moved behind its reader
  std::string action;       ///< what was changed, or why it could not be
};

/// What `optimize_architecture` found and did.
struct ArchitectureReport {
  std::vector<Bottleneck> bottlenecks;
  int moved = 0;  ///< poolings moved
};

/// The bottleneck sites of a network by the rule of ArchitectureOptions.
std::vector<Bottleneck> find_bottlenecks(const Network& net, const ArchitectureOptions& o = {});

/// Moves every global average pooling whose site is a bottleneck behind its single linear reader
/// (1x1 convolution without padding or stride, or fully-connected block; neither with a ReLU or
/// a pooling of its own). A fully-connected reader becomes the equivalent 1x1 convolution.
/// Returns the rewritten network (arch name with "-opt" appended when anything changed) and
/// fills `report`. The float class scores agree with the input network's up to rounding.
Network optimize_architecture(const Network& net, ArchitectureReport& report,
                              const ArchitectureOptions& o = {});

/// Largest absolute difference of the float class scores of two networks on `test`'s images
/// (each pre-processed as `a` does it).
double max_score_difference(const Network& a, const Network& b, const Dataset& test);

/// Options of harden_architecture.
struct ArchitectureRunOptions {
  ArchitectureOptions arch;
  int64_t check_images = 500;  ///< first test images on which the float class scores are compared
  std::string from;            ///< path of the input model, recorded in meta["harden"]
  std::string command;         ///< the command that ran it, recorded in meta["harden"]
  ProgressFn progress;         ///< the re-calibration of a quantized model, when set
};

/// What harden_architecture made.
struct ArchitectureRun {
  Model model;  ///< the rewritten model, meta["harden"] describing the change
  ArchitectureReport report;
  int64_t checked_images = 0;               ///< test images compared (0: no test images given)
  double max_difference = 0;                ///< max_score_difference on them
  std::optional<QuantOptions> requantized;  ///< the re-calibration, for a quantized model
};

/// IV-A on a model file's contents: optimize_architecture, then, when `test` has images, the
/// float class scores compared on the first check_images of them and the float (and, for a
/// quantized model, 8-bit) test accuracy recorded in the meta. A quantized model is re-calibrated
/// on the first calibration images of `train` with its own word length and signedness; it throws
/// Error without training images, since the formats of the changed sites must be chosen anew.
ArchitectureRun harden_architecture(const Model& m, const Dataset& train, const Dataset& test,
                                    const ArchitectureRunOptions& o);

// ---------------------------------------------------------------------------------------------
// Feature optimization (IV-B, Algorithm 1).
// ---------------------------------------------------------------------------------------------

/// Eq. 6: the weights of a block that reads a site, each input feature c scaled by the site's
/// mean criticality over its own: w̃_k,c,u,v = w_k,c,u,v / (η_c · C) · Σ_c' η_c', so that weights
/// fed by a feature of above-average criticality η (eq. 5) shrink and the others grow; the
/// reciprocals of the factors average one (the paper's "average weight scaling factor of one"),
/// and eq. 5 on the adjusted weights gives every feature the mean criticality. `weight` is
/// K x C x U x V (convolution) or K x (C·H·W) (fully-connected, whose input is the C x H x W
/// site: columns c·H·W .. (c+1)·H·W − 1 belong to feature c);
/// `eta` has C non-negative values. A feature with η_c = 0 (no relevance reaches it) keeps its
/// weights: eq. 6 would scale them without bound. Throws Error for a size mismatch, a negative
/// or non-finite η, or an all-zero η. Returns a new tensor of the weight's shape and type.
/// With `groups` > 1 the reader is a grouped convolution, weights K x C/groups x U x V: output k
/// of group g reads features g·C/groups .. (g+1)·C/groups − 1, each scaled by its own factor.
torch::Tensor adjust_weights(const torch::Tensor& weight, const torch::Tensor& eta,
                             int64_t groups = 1);

/// η (eq. 5) of every site of a quantized network over `images` (relevance of eq. 3 on them).
/// Indexed by block; undefined where no weighted block reads the site (and for the last block).
std::vector<torch::Tensor> site_etas(const QuantizedNetwork& q, const torch::Tensor& images,
                                     const torch::Tensor& labels, const RelevanceOptions& o);

/// The sites that a weighted block and an addition both read: the input of a residual unit
/// whose shortcut is the identity. Eq. 6 cannot scale such a feature's outgoing weights alone:
/// the shortcut carries the unscaled value to the addition (docs/harden.md).
std::vector<int> shortcut_sites(const Network& net);

/// Lines 2–7 of Algorithm 1: eq. 6 on every weighted block whose input is a site with a defined
/// η (`etas` indexed by block, as site_etas gives them); blocks reading the network input keep
/// their weights, and so do the readers of a shortcut site (shortcut_sites). Returns the
/// adjusted network and, through `adjusted`, the blocks changed.
Network adjust_network(const Network& net, const std::vector<torch::Tensor>& etas,
                       std::vector<int>* adjusted = nullptr);

/// Options of Algorithm 1.
struct FeatureOptions {
  int iterations = 5;  ///< T; with until_baseline, the most iterations tried
  /// The paper's rule: stop at the first iteration whose 8-bit test accuracy right after the
  /// adjustment is at least `baseline` (the original float accuracy); that adjustment is final.
  bool until_baseline = false;
  double baseline = 0;                  ///< float test accuracy of the original model
  int64_t relevance_images = 1000;      ///< first training images for eq. 3 (the set D)
  RelevanceOptions relevance;
  QuantOptions quant;                   ///< re-calibration after every adjustment
  TrainOptions finetune;                ///< fine-tuning between adjustments (quantized is set
                                        ///< to the current formats, batchnorm off)
  /// Every phase of every iteration, named "iteration T/N: " + the phase of relevance,
  /// calibration and refinement, or "fine-tuning" (batches); iteration 0 is the input model.
  /// Replaces the progress of `relevance`, `quant` and `finetune` when set.
  ProgressFn progress;
};

/// What one iteration measured, right after its adjustment (iteration 0: the input model).
struct FeatureIteration {
  int iteration = 0;
  double quantized_accuracy = 0;  ///< 8-bit test accuracy (Fig. 5a)
  double float_accuracy = 0;      ///< float test accuracy of the same weights
  double mean_sd = 0;             ///< Fig. 5b, η recomputed on the adjusted model
  std::vector<int> sites;         ///< blocks whose η enters mean_sd
  std::vector<double> site_sd;    ///< normalized SD of each of them
  double finetune_train_accuracy = -1;  ///< of the fine-tuning that followed (-1: none)
  double seconds = 0;             ///< time of the iteration, fine-tuning included
};

/// The state of Algorithm 1 between iterations: what a checkpoint holds.
struct FeatureState {
  Network net;
  QuantFormats formats;
  std::vector<FeatureIteration> history;  ///< iteration 0 (the input) first
  int done = 0;            ///< iterations completed (adjusted and, but for the last, fine-tuned)
  bool finished = false;   ///< the last adjustment is made: net and formats are the result
  bool reached = false;    ///< until_baseline: the final accuracy is at least the baseline
};

/// Algorithm 1 on a quantized model, from `state` (done = 0 and an empty history to start; a
/// checkpoint to continue). Iteration t (1-based): η of every site on the relevance images,
/// eq. 6 on their readers, re-calibration of every format on the calibration images (as
/// `flipguard quantize` does), the test accuracy and Fig. 5b's spread measured; then, unless it
/// is the last iteration, quantization-aware fine-tuning on `train` with those formats.
/// `on_iteration` is called after every fine-tuning with the state to checkpoint. Throws Error
/// when a fine-tuning diverges (check_finetuning, or a loss that is not finite), before its
/// state is handed to `on_iteration`: the last checkpoint stays the one before it.
FeatureState optimize_features(FeatureState state, const Dataset& train, const Dataset& test,
                               const FeatureOptions& o,
                               const std::function<void(const std::string&)>& log,
                               const std::function<void(const FeatureState&)>& on_iteration = {});

/// A fine-tuning between adjustments has diverged when the training accuracy of its last epoch
/// is more than this fraction below the 8-bit test accuracy of the adjusted model it started
/// from. A fine-tuning that works ends above that accuracy (it wins back what the adjustment
/// cost, and a running training accuracy is no lower than a test accuracy here: on MNIST 0.3 to
/// 17 points above it); one whose learning rate is too high for the quantized network, which has
/// no batch normalization left, falls towards chance (lr 0.005 on mnist-cnn-opt: 47 % against
/// the 81 % it started from).
constexpr double kFinetuneCollapse = 0.10;

/// Throws Error, naming the iteration, both accuracies and the learning rate, when the
/// fine-tuning of iteration `iteration` diverged by the rule of kFinetuneCollapse.
void check_finetuning(int iteration, double adjusted_accuracy, double finetune_train_accuracy,
                      double lr);

// ---- A whole run of Algorithm 1: checkpoints, resume, the model file and Fig. 5 ------------

/// Options of harden_features: Algorithm 1 with its checkpoints, its report and its provenance.
struct FeatureRunOptions {
  /// Algorithm 1's options. `baseline` is measured by the run (or read from the checkpoint);
  /// `quant.bits` and `quant.is_signed` follow a quantized input model; the fine-tuning's
  /// augmentation is set from `augment` and its teacher from `distill`.
  FeatureOptions features;
  std::string augment = "auto";  ///< augmentation preset of the fine-tuning (set_augment)
  /// Fine-tune on the input model's float class scores (distillation, features.finetune's
  /// temperature) instead of the labels: for fine-tuning on few images.
  bool distill = false;
  int64_t train_images = 0;  ///< the first N training images only (0: all)
  int64_t test_images = 0;   ///< the first N test images only (0: all)
  std::string out;           ///< the model file to write
  std::string checkpoint;    ///< state after every fine-tuning; empty: out + ".ckpt"
  bool resume = false;       ///< continue from `checkpoint` (same options but iterations)
  std::string report_dir;    ///< features.json and Fig. 5; empty: feature_report_dir(out)
  std::string from;          ///< path of the input model, recorded (and in the signature)
  std::string data;          ///< the data set as the caller named it, recorded likewise
  std::string command;       ///< the command that ran it, recorded in the summary
};

/// What harden_features did.
struct FeatureRun {
  FeatureState state;    ///< the final state; history holds every iteration
  double baseline = 0;   ///< float test accuracy of the input model
  bool reached = false;  ///< the final 8-bit accuracy is at least the baseline
  /// until_baseline was not reached: the checkpoint (after the last fine-tuning) is kept so
  /// that a run with more iterations can resume it; otherwise it is removed.
  bool short_of_baseline = false;
  std::string checkpoint;  ///< the checkpoint file used
  std::string report_dir;  ///< where features.json and the figures went
  nlohmann::json summary;  ///< meta["harden"] of the written model
};

/// Algorithm 1 from a model file's contents to the hardened model file: quantizes a float model
/// first (features.quant), measures the baseline on `test`, runs optimize_features with a
/// checkpoint after every fine-tuning (or resumes one, checking its signature), writes `out`,
/// `report_dir`/features.json and Fig. 5 (fig5a_accuracy, fig5b_criticality_sd; a figure that
/// gnuplot cannot render is logged as a warning), and removes the checkpoint unless the run
/// stopped short of the baseline. Throws Error for no training images, images of another shape,
/// and a checkpoint of another run or with as many iterations as asked for.
FeatureRun harden_features(const Model& m, const Dataset& train, const Dataset& test,
                           FeatureRunOptions o, const std::function<void(const std::string&)>& log);

/// What must agree between a checkpoint and the run that resumes it: every option but
/// features.iterations, as text (stored in the checkpoint).
std::string features_signature(const FeatureRunOptions& o);

/// The default report folder of harden_features: `out` without its extension + ".features".
std::string feature_report_dir(const std::string& out);

/// One iteration's measurements as JSON (history of features.json and of the checkpoint), and
/// back. finetune_train_accuracy -1 (none) is null.
nlohmann::json to_json(const FeatureIteration& it);
FeatureIteration feature_iteration_from_json(const nlohmann::json& j,
                                            const std::string& where = "feature iteration");

/// Writes the checkpoint of harden_features: the model file of `st` (meta from `meta`) with
/// meta["features_state"] = {signature, done, baseline, history}.
void save_feature_checkpoint(const std::string& path, const FeatureState& st, double baseline,
                             const std::string& signature, const nlohmann::json& meta);

/// Reads a checkpoint written by save_feature_checkpoint; the baseline goes to `baseline`.
/// Throws Error when the file is not such a checkpoint or its signature is not `signature`.
FeatureState load_feature_checkpoint(const std::string& path, const std::string& signature,
                                     double& baseline);

/// Fig. 5a: the 8-bit test accuracy right after each adjustment, beside the float baseline.
Plot feature_accuracy_plot(const std::vector<FeatureIteration>& history, double baseline);

/// Fig. 5b: the mean over sites of SD(η / mean(η)) after each adjustment.
Plot feature_spread_plot(const std::vector<FeatureIteration>& history);

// ---- Range restriction (Ranger, Chen et al., DSN 2021): a baseline beside section IV ------

/// The formats of `q` with every activation site restricted to the range of codes that the
/// fixed-point pass writes there on `images` (uint8 pixels, in batches): readers then clamp a
/// site's codes into [lowest, highest] seen (FixedPoint::restricted), so that a flipped high bit
/// cannot push a value beyond what the network ever produced on those images. Restrictions
/// already in `q` are ignored: the ranges are those of the unrestricted network.
QuantFormats restrict_ranges(const Network& net, const QuantFormats& q, const torch::Tensor& images,
                             int64_t batch = 250);

/// What harden_ranges made.
struct RangesRun {
  Model model;        ///< the input model with restricted formats; meta["harden"] filled
  double before = 0;  ///< 8-bit test accuracy without the ranges
  double after = 0;   ///< and with them
};

/// Ranger on a quantized model file's contents: restrict_ranges on `train`'s images, the test
/// accuracy before and after, and meta["harden"] (method "ranges", every site's range, the
/// previous meta["harden"]) with `from` and `command` recorded. Throws Error for a float model
/// or no training images.
RangesRun harden_ranges(const Model& m, const Dataset& train, const Dataset& test,
                        const std::string& from, const std::string& command);

}  // namespace flipguard
