#pragma once
/// \file
/// Bit-flip faults in a quantized network (sections II-C and V-C), the fault-free golden run
/// they are judged against, and the engines that evaluate them.
///
/// A fault flips one bit of one stored code: of a neuron of an activation site, between the
/// block that writes the site and every block that reads it (Fig. 2), for one inference; or of
/// a weight, for the whole evaluation. A *failure* is an image that the fault-free quantized
/// network classifies correctly and the faulty one does not (V-D); only originally correct
/// images count.
#include <flipguard/fixed_point.hpp>
#include <flipguard/progress.hpp>
#include <flipguard/quant.hpp>

#include <memory>
#include <string>
#include <vector>

namespace flipguard {

/// What memory the faults hit.
enum class FaultTarget {
  Activations,  ///< neuron outputs of the activation sites, one inference at a time
  Weights,      ///< stored weight codes of weighted blocks, for the whole evaluation
};

/// "activations" or "weights".
std::string to_string(FaultTarget t);

/// One bit flip.
struct Fault {
  int block = 0;      ///< the site (activations) or weighted block (weights), a block index
  int64_t index = 0;  ///< neuron: flat index into C x H x W; weight: flat index into the tensor
  int bit = 0;        ///< 0 is the LSB, bits - 1 the MSB (the sign bit of a signed format)
  bool operator==(const Fault& o) const {
    return block == o.block && index == o.index && bit == o.bit;
  }
};

/// The code a reader sees after bit `bit` of the `f.bits`-bit word that stores `code` flipped
/// (two's complement when signed): the flipped word, clamped into the format's range
/// restriction when it has one (FixedPoint::restricted; a no-op otherwise). Throws Error when
/// the code or the bit is out of the format's range.
int64_t flip_bit(int64_t code, int bit, const FixedPoint& f);

/// flip_bit on every element of a tensor of codes (any dtype holding exact integers); returns
/// the same dtype.
torch::Tensor flip_bits(const torch::Tensor& codes, int bit, const FixedPoint& f);

/// What a golden run found: images evaluated and how many of them the fault-free network
/// classified correctly (over one run, or summed over the chunks of a campaign's images).
struct GoldenTotals {
  int64_t images = 0, correct = 0;
  double accuracy() const { return images ? double(correct) / images : 0.0; }
};

/// The fault-free quantized run over an image set, done once. It keeps, for the originally
/// correct images only, what the engines need: the input codes, every site's codes (in the
/// narrowest integer type that holds the format) and the exact class scores; at most
/// bytes_per_image() per image.
class GoldenRun {
 public:
  /// Runs `q` on `images` (uint8 N x C x H x W) in chunks of `chunk` images; `progress` hears
  /// of phase "golden run" (images).
  GoldenRun(const QuantizedNetwork& q, const torch::Tensor& images, const torch::Tensor& labels,
            int64_t chunk = 500, const ProgressFn& progress = {});

  /// Bytes of stored codes (the input's and every site's) that one correct image takes.
  static int64_t bytes_per_image(const QuantizedNetwork& q);
  GoldenTotals totals() const { return {images(), correct()}; }

  int64_t images() const { return predicted_.size(0); }  ///< images evaluated
  int64_t correct() const { return correct_index_.size(0); }  ///< originally correct ones
  double accuracy() const { return images() ? double(correct()) / images() : 0.0; }
  /// Predicted class of every image (int64, N).
  const torch::Tensor& predicted() const { return predicted_; }
  /// Indices of the originally correct images into the evaluated set (int64).
  const torch::Tensor& correct_index() const { return correct_index_; }
  /// Labels of the originally correct images (int64).
  const torch::Tensor& correct_labels() const { return labels_; }
  /// Golden class scores of the originally correct images (float64, exact, correct x classes).
  const torch::Tensor& scores() const { return scores_; }

  /// Codes (float32 of exact integers) of block `b`'s output for correct images [begin, end);
  /// b = Block::kNetworkInput gives the input codes. Not defined for the last block.
  torch::Tensor codes(int b, int64_t begin, int64_t end) const;
  /// The stored codes of block `b`'s output (or of the input) for all correct images, in their
  /// compact integer type (correct x C x H x W).
  const torch::Tensor& stored(int b) const {
    return b == Block::kNetworkInput ? input_ : sites_.at(b);
  }

 private:
  torch::Tensor predicted_, correct_index_, labels_, scores_, input_;
  std::vector<torch::Tensor> sites_;
};

/// Evaluates fault sets against a golden run.
class Engine {
 public:
  virtual ~Engine() = default;
  /// How many of the golden run's originally correct images the faults (all at once, in one
  /// inference for activations; in the stored weights for weights) make misclassified. Safe to
  /// call from several threads at once.
  virtual int64_t failures(const std::vector<Fault>& faults) = 0;
  /// Whether the engine evaluates these fault sets image by image (`failures_over`), sharing the
  /// work on one image between all of them; such an engine runs its own threads.
  virtual bool image_major(const std::vector<std::vector<Fault>>& sets) const;
  /// Adds to counts[i] the failures of sets[i] among the originally correct images
  /// [begin, end), on `threads` threads. Only for fault sets that image_major() accepts; throws
  /// Error otherwise.
  virtual void failures_over(const std::vector<std::vector<Fault>>& sets, int64_t begin,
                             int64_t end, int threads, std::vector<int64_t>& counts);
};

/// Options of the engines.
struct EngineOptions {
  int64_t chunk = 1000;  ///< images per batch
  /// Cone engine: skip an image when a conservative bound on the change of its class scores
  /// stays below its golden margin (never changes a result; off for tests of that).
  bool prune = true;
  /// Cone engine: vector instructions (AVX2) where the processor has them; off: the plain loops
  /// they must equal (tests).
  bool simd = true;
};

/// Names of the engines, for --engine.
const std::vector<std::string>& engine_names();

/// The engine called `name` ("reference"). `q` and `golden` must outlive it. Throws Error for an
/// unknown name, listing the known ones.
std::unique_ptr<Engine> make_engine(const std::string& name, const QuantizedNetwork& q,
                                    const GoldenRun& golden, FaultTarget target,
                                    const EngineOptions& o = {});

/// Checks a fault against a network: block, index and bit in range for the target. Throws Error.
void check_fault(const QuantizedNetwork& q, FaultTarget target, const Fault& f);

/// The plain reference: re-runs the network from the first faulty block with the flipped codes,
/// taking everything before it from the golden run. The oracle for every faster engine.
class ReferenceEngine : public Engine {
 public:
  ReferenceEngine(const QuantizedNetwork& q, const GoldenRun& golden, FaultTarget target,
                  const EngineOptions& o = {});
  int64_t failures(const std::vector<Fault>& faults) override;
  /// Whether each originally correct image fails (bool, correct()).
  torch::Tensor failed(const std::vector<Fault>& faults);
  /// The faulty class scores of the correct images (float64 exact numerators, correct x classes),
  /// on the scale of GoldenRun::scores.
  torch::Tensor scores(const std::vector<Fault>& faults);

 private:
  const QuantizedNetwork& q_;
  const GoldenRun& g_;
  FaultTarget target_;
  EngineOptions o_;
};

/// What the cone engine did with the (fault, image) pairs it evaluated.
struct ConeStats {
  int64_t pairs = 0;     ///< (fault set, image) pairs evaluated
  int64_t vanished = 0;  ///< the change died out before the class scores (ReLU, pooling, rounding)
  int64_t pruned = 0;    ///< proven harmless by the bound, without computing the rest
  int64_t scored = 0;    ///< the change reached the class scores and was computed exactly
};

/// The cone engine: integer arithmetic on the cone of influence, image-major. For a chunk of
/// images it computes the golden accumulators of every block once; then, image by image, it
/// evaluates every single-neuron fault of the campaign by pushing the *change* of the flipped
/// code through the network as a sparse list of (channel, row, column, change of code): each
/// convolution adds change x weight into the few accumulators the change reaches (int32, channels
/// innermost), ReLU, pooling and rounding are applied to golden accumulator + change, and entries
/// whose code does not change are dropped; the last block adds its change to the golden class
/// scores. With pruning, when the change has reached a site read by a convolution that feeds the
/// last block (a 1x1 convolution with global average pooling, no ReLU), a bound on the change of
/// every class-score difference (triangle inequality through both weight layers, rounding adding
/// at most one code per position) is compared with the image's golden margins, and the image is
/// skipped when it cannot fail. Networks it handles: graphs of convolutions (grouped and
/// depthwise ones included), fully-connected blocks, max and global average pooling and residual
/// additions, with ReLU and clamps (ReLU6, hardtanh); a site's change is kept until its last
/// reader, so a change along a shortcut meets the branch's at the addition. Everything else
/// (concatenations, several faults at once, weight faults, single calls of `failures`) goes to
/// the incremental engine. Bit-identical to the reference (tests).
class ConeEngine : public Engine {
 public:
  ConeEngine(const QuantizedNetwork& q, const GoldenRun& golden, FaultTarget target,
             const EngineOptions& o = {});
  ~ConeEngine() override;
  int64_t failures(const std::vector<Fault>& faults) override;
  bool image_major(const std::vector<std::vector<Fault>>& sets) const override;
  void failures_over(const std::vector<std::vector<Fault>>& sets, int64_t begin, int64_t end,
                     int threads, std::vector<int64_t>& counts) override;
  /// Whether the network is one the cone kernel handles; otherwise `why` says what is not.
  bool supported(std::string* why = nullptr) const;
  /// Totals over every failures_over call so far.
  ConeStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The incremental engine: a single flipped neuron changes only its cone of influence. It
/// recomputes, block by block, only the output window that the change can reach (a k x k window
/// of the next convolution, widened by its pooling), from the golden codes around it; drops the
/// images whose change has vanished (ReLU, pooling or rounding absorbed it) and shrinks the window
/// to where the change survives; and adds the change of the last block's global average pooling
/// to the golden class scores. Blocks it has no window rule for (pooling, fully-connected,
/// concatenation) are computed whole, for the remaining images. Fault sets of several faults and
/// weight faults go to the reference engine. Bit-identical to the reference (tests).
class IncrementalEngine : public Engine {
 public:
  IncrementalEngine(const QuantizedNetwork& q, const GoldenRun& golden, FaultTarget target,
                    const EngineOptions& o = {});
  ~IncrementalEngine() override;
  int64_t failures(const std::vector<Fault>& faults) override;
  /// The faulty class scores, as ReferenceEngine::scores and equal to them.
  torch::Tensor scores(const std::vector<Fault>& faults);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  FaultTarget target_;
};

}  // namespace flipguard
