#pragma once
/// \file
/// Bring your own model: TorchScript modules (traced or scripted, as `torch.jit.save` writes
/// them) converted into flipguard's block graph, and a (hardened) model's weights written back
/// under the module's own parameter names as a state dict that Python's `torch.load` reads.
///
/// Supported operations: 2-D convolution (square kernel; stride, padding, dilation; grouped and
/// depthwise), linear (and addmm), ReLU, clamps (hardtanh, ReLU6, clamp), max pooling and
/// average pooling (square windows, ceil_mode), adaptive average pooling (to 1x1, or where it
/// equals a plain average pooling), concatenation along channels, residual additions of two
/// tensors (alpha 1), flatten and view/reshape to (batch, features), dropout (dropped: inference
/// semantics) and batch normalization in evaluation mode (folded into the convolution or linear
/// layer before it): torchvision's SqueezeNet, ResNet and MobileNetV2 import as traced. Anything
/// else is an Error that names the operation and the source line it came from.
#include <flipguard/model_file.hpp>
#include <flipguard/network.hpp>

#include <string>
#include <vector>

namespace flipguard {

/// What `import_torchscript` needs besides the file.
struct ImportOptions {
  Shape input;                     ///< C x H x W of one image, e.g. 3x224x224
  std::vector<double> mean, std;   ///< per channel pre-processing (see Network::preprocess)
  std::string arch;                ///< the network's name; default: the file's stem
};

/// The ImageNet pre-processing that torchvision's models expect (on pixels scaled to [0, 1]).
const std::vector<double>& imagenet_mean();
const std::vector<double>& imagenet_std();

/// Converts a TorchScript module into a float Model. The model's metadata (`meta["torchscript"]`)
/// records, for every weighted block, the module's parameter names it came from (and the batch
/// normalization folded into it), which `export_state_dict` needs. Throws Error for a file that is
/// not a TorchScript archive, an unsupported operation (naming it and where it is), or a graph
/// that does not fit the block model.
Model import_torchscript(const std::string& path, const ImportOptions& options);

/// Largest absolute difference between the class scores of `model` (float) and those of the
/// TorchScript module at `path`, run by LibTorch itself, on `n` random inputs (seeded), and the
/// largest absolute class score, so that a caller can judge the difference relative to it.
struct ImportCheck {
  double max_abs_diff = 0;
  double max_abs_score = 0;
};
ImportCheck compare_with_torchscript(const Model& model, const std::string& path, int n,
                                     uint64_t seed);

/// The state dict of an imported (possibly hardened) model under the module's parameter and
/// buffer names. A folded batch normalization is written as the identity (weight 1, bias 0,
/// running mean 0, running variance 1 - eps) after a convolution that carries the folded
/// weights; when that convolution has no bias of its own, the folded bias goes into the running
/// mean (as its negative). Throws Error for a model that was not imported from TorchScript, whose
/// blocks no longer match the recorded names, or whose bias has nowhere to go.
std::vector<std::pair<std::string, torch::Tensor>> state_dict(const Model& model);

/// Writes `state_dict(model)` to `path` in the format of Python's `torch.save` (loadable with
/// `torch.load` and `load_state_dict`), atomically.
void export_state_dict(const Model& model, const std::string& path);

}  // namespace flipguard
