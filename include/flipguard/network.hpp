#pragma once
/// \file
/// A CNN as a directed acyclic graph of blocks (DESIGN.md). A block is one weighted or pooling
/// operation (convolution, grouped or depthwise convolution, fully-connected, pooling,
/// concatenation, residual addition) with an optional activation (ReLU, a clamp such as ReLU6)
/// and an optional pooling behind it. What a block outputs is what an accelerator writes to memory: an
/// activation site. Every block but the last is a site; the last one's output is the class scores.
#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace flipguard {

/// The operation a block performs on its input(s).
enum class Op {
  Conv,    ///< 2-D convolution with bias, grouped when Block::groups > 1 (depthwise: groups = C)
  Linear,  ///< fully-connected layer with bias; flattens its input
  Pool,    ///< a pooling operation on its own (see Block::pool)
  Concat,  ///< channel concatenation of two or more inputs
  Add,     ///< element-wise sum of two or more inputs of one shape (a residual addition)
};

enum class PoolKind {
  None,
  Max,        ///< max pooling over kernel x kernel windows
  Avg,        ///< average pooling (padding counts as zeros; divisor kernel^2)
  GlobalAvg,  ///< mean over the whole spatial extent; output C x 1 x 1
};

/// A pooling window. `kernel`/`stride` are ignored for GlobalAvg.
struct PoolSpec {
  PoolKind kind = PoolKind::None;
  int kernel = 2;
  int stride = 2;
  int padding = 0;
  bool ceil_mode = false;
  static PoolSpec max(int kernel, int stride) { return {PoolKind::Max, kernel, stride, 0, false}; }
  static PoolSpec global_avg() { return {PoolKind::GlobalAvg, 1, 1, 0, false}; }
  bool operator==(const PoolSpec& o) const {
    return kind == o.kind && kernel == o.kernel && stride == o.stride && padding == o.padding &&
           ceil_mode == o.ceil_mode;
  }
};

/// Layer shape: channels x height x width (1 x 1 for vectors).
struct Shape {
  int64_t c = 0, h = 0, w = 0;
  int64_t numel() const { return c * h * w; }
  bool operator==(const Shape& o) const { return c == o.c && h == o.h && w == o.w; }
  std::string str() const;
};

/// One block of the graph. Inputs are indices of earlier blocks, or kNetworkInput.
struct Block {
  static constexpr int kNetworkInput = -1;
  std::string name;
  Op op = Op::Conv;
  std::vector<int> inputs{kNetworkInput};
  // Conv / Linear
  int64_t out_channels = 0;
  int kernel = 1, stride = 1, padding = 0, dilation = 1;
  int groups = 1;        ///< Conv: input and output channels split into this many groups
  torch::Tensor weight;  ///< Conv: K x C/groups x k x k; Linear: K x (C*H*W); float32
  torch::Tensor bias;    ///< K; float32
  // Pool
  PoolSpec pool;  ///< the operation of an Op::Pool block
  // Behind the operation: the activation max(x, 0) when `relu`, then the clamp
  // min(max(x, clamp_min), clamp_max) (hardtanh; ReLU6 is relu with clamp_max = 6), then `post`.
  bool relu = false;
  double clamp_min = -std::numeric_limits<double>::infinity();
  double clamp_max = std::numeric_limits<double>::infinity();
  PoolSpec post;  ///< optional pooling after the activation (kind None: none)

  bool weighted() const { return op == Op::Conv || op == Op::Linear; }
  /// Whether a clamp bound is set (hardtanh, ReLU6).
  bool clamps() const { return clamp_min > -kInf || clamp_max < kInf; }
  /// Whether anything acts on the operation's result before `post` (ReLU or clamp).
  bool activated() const { return relu || clamps(); }
  /// The activation's bounds: what it does is min(max(x, act_lo()), act_hi()).
  double act_lo() const { return relu ? std::max(0.0, clamp_min) : clamp_min; }
  double act_hi() const { return clamp_max; }
  /// Whether the activation and pooling behind the operation keep every value as it is.
  bool plain() const { return !activated() && post.kind == PoolKind::None; }

 private:
  static constexpr double kInf = std::numeric_limits<double>::infinity();
};

/// The block's activation (ReLU, clamp) applied to `y`, the float reference.
torch::Tensor activate(const Block& b, const torch::Tensor& y);

/// The network: blocks in topological order, input shape and pre-processing.
class Network {
 public:
  std::string arch;                 ///< e.g. "mnist-cnn"
  Shape input;                      ///< C x H x W of one image
  std::vector<double> input_mean;   ///< per channel, applied to pixels scaled to [0, 1]
  std::vector<double> input_std;    ///< per channel
  std::vector<Block> blocks;

  /// Checks the graph (input indices, channel counts, weight shapes) and computes shapes; throws
  /// Error describing the first inconsistency.
  void validate() const;
  /// Output shape of every block, computed from the input shape; `before_post`, when given,
  /// receives each block's shape before its post pooling.
  std::vector<Shape> shapes(std::vector<Shape>* before_post = nullptr) const;
  /// Images per batch, at most `wanted`, such that a pass that keeps every block's output
  /// (float32) and works on one block's exact result at a time (float64, a few temporaries) holds
  /// about `budget` bytes: 788 images for the MNIST networks, 956 for CIFAR-10's, 34 for
  /// SqueezeNet 1.1 at 224x224 (8 within relevance's 256 MiB).
  /// At least 1.
  int64_t batch_within(int64_t wanted, int64_t budget = int64_t{1} << 30) const;
  /// Indices of the activation sites: every block but the last.
  std::vector<int> sites() const;
  int64_t num_classes() const;
  /// All weight and bias tensors, in block order (weight then bias).
  std::vector<torch::Tensor> parameters() const;

  /// Pixels (uint8, N x C x H x W) to the network's float input: x/255, then (x - mean)/std.
  torch::Tensor preprocess(const torch::Tensor& images) const;

  /// Float forward pass of one block given its (already computed) inputs.
  torch::Tensor forward_block(int b, const std::vector<torch::Tensor>& inputs) const;
  /// Float forward pass; returns the output of every block (the last is the class scores).
  std::vector<torch::Tensor> forward_all(const torch::Tensor& x) const;
  /// Float forward pass; returns the class scores N x classes.
  torch::Tensor forward(const torch::Tensor& x) const;

  /// Deep copy (weights cloned).
  Network clone() const;
};

/// Float forward pass of one block on its inputs, with the block's own weights; what
/// Network::forward_block does, for a block outside a network (e.g. with fake-quantized weights).
torch::Tensor forward_block(const Block& b, const std::vector<torch::Tensor>& inputs);

/// Checks that `images` (N x C x H x W) fit the network's input; throws Error naming the data
/// set, the images' shape and the shape the network expects.
void check_images(const Network& net, const torch::Tensor& images, const std::string& data_name);

/// The shape that pooling `p` makes of `s` (PyTorch's rule, ceil_mode included).
Shape pooled_shape(const Shape& s, const PoolSpec& p);

/// The float reference for pooling, shared by the float pass and tests.
torch::Tensor apply_pool(const torch::Tensor& x, const PoolSpec& p);

/// Top-1 accuracy of a float network on a data set, in batches, without gradients.
double float_accuracy(const Network& net, const torch::Tensor& images, const torch::Tensor& labels,
                      int64_t batch = 500);

}  // namespace flipguard
