#include <flipguard/error.hpp>
#include <flipguard/zoo.hpp>

#include <cmath>

namespace flipguard {

namespace {

struct ConvSpec {
  int64_t out;
  int kernel;
  bool relu;
  PoolSpec post;
};

Block conv_block(const std::string& name, int input, int64_t in_channels, const ConvSpec& s,
                 torch::Generator& gen) {
  Block b;
  b.name = name;
  b.op = Op::Conv;
  b.inputs = {input};
  b.out_channels = s.out;
  b.kernel = s.kernel;
  b.padding = s.kernel / 2;
  b.relu = s.relu;
  b.post = s.post;
  // Kaiming-uniform for ReLU layers (He et al.), the usual fan-in bound otherwise.
  const double fan_in = static_cast<double>(in_channels) * s.kernel * s.kernel;
  const double bound = (s.relu ? std::sqrt(6.0) : 1.0) / std::sqrt(fan_in);
  b.weight = torch::empty({s.out, in_channels, s.kernel, s.kernel}).uniform_(-bound, bound, gen);
  b.bias = torch::zeros({s.out});
  return b;
}

Block gap_block(const std::string& name, int input) {
  Block b;
  b.name = name;
  b.op = Op::Pool;
  b.inputs = {input};
  b.pool = PoolSpec::global_avg();
  return b;
}

/// Table I: a chain of convolutions, then either global average pooling followed by the 1x1
/// class-score convolution (original), or the 1x1 convolution followed by global average pooling
/// inside the same block (architecture-optimized, section V-E1).
Network chain(const std::string& arch, Shape input, std::vector<double> mean,
              std::vector<double> std, const std::vector<ConvSpec>& convs, bool optimized,
              uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Network net;
  net.arch = arch;
  net.input = input;
  net.input_mean = std::move(mean);
  net.input_std = std::move(std);
  int64_t c = input.c;
  for (size_t i = 0; i < convs.size(); ++i) {
    net.blocks.push_back(conv_block("conv" + std::to_string(i), static_cast<int>(i) - 1, c,
                                    convs[i], gen));
    c = convs[i].out;
  }
  const int last = static_cast<int>(net.blocks.size()) - 1;
  const ConvSpec scores{10, 1, false, {}};
  if (optimized) {
    ConvSpec s = scores;
    s.post = PoolSpec::global_avg();
    net.blocks.push_back(conv_block("scores", last, c, s, gen));
  } else {
    net.blocks.push_back(gap_block("gap", last));
    net.blocks.push_back(conv_block("scores", last + 1, c, scores, gen));
  }
  net.validate();
  return net;
}

const std::vector<double> kCifarMean{0.4914, 0.4822, 0.4465};
const std::vector<double> kCifarStd{0.2470, 0.2435, 0.2616};

Network mnist_cnn(const std::string& arch, bool optimized, uint64_t seed) {
  const PoolSpec none{}, max2 = PoolSpec::max(2, 2);
  return chain(arch, {1, 28, 28}, {0.0}, {1.0},
               {{16, 3, true, none}, {64, 3, true, max2}, {64, 3, true, none}}, optimized, seed);
}

/// Table I's CIFAR-10 convolutions: 32, 32 + pooling, 64, 64 + pooling, 128, 128 channels.
std::vector<ConvSpec> cifar_convs() {
  const PoolSpec none{}, max2 = PoolSpec::max(2, 2);
  return {{32, 3, true, none}, {32, 3, true, max2}, {64, 3, true, none},
          {64, 3, true, max2}, {128, 3, true, none}, {128, 3, true, none}};
}

Network cifar_cnn(const std::string& arch, bool optimized, uint64_t seed) {
  return chain(arch, {3, 32, 32}, kCifarMean, kCifarStd, cifar_convs(), optimized, seed);
}

/// Not in Table I: the CIFAR-10 network's convolutions on MNIST's 1x28x28 images. Its receptive
/// field covers the whole digit (Table I's MNIST network sees 10x10 pixels at a time), so it
/// is the stronger network that `train --teacher` distills mnist-cnn from.
Network mnist_teacher(const std::string& arch, uint64_t seed) {
  return chain(arch, {1, 28, 28}, {0.0}, {1.0}, cifar_convs(), false, seed);
}

/// He et al. 2016, section 4.2: a 3x3 convolution of 16 channels, three stages of three basic
/// blocks (two 3x3 convolutions and an addition with ReLU) at 16, 32 and 64 channels, the first
/// block of stages 2 and 3 with stride 2; global average pooling and a fully-connected layer.
/// Shortcuts are the identity, or a 1x1 convolution of stride 2 where the shape changes (their
/// option B, projection, instead of A's zero padding, which is not a block of its own here).
/// Every addition and the pooling are sites: an accelerator writes each to memory.
Network cifar_resnet20(const std::string& arch, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Network net;
  net.arch = arch;
  net.input = {3, 32, 32};
  net.input_mean = kCifarMean;
  net.input_std = kCifarStd;
  auto conv = [&](const std::string& name, int input, int64_t in, int64_t out, int kernel,
                  int stride, bool relu) {
    Block b = conv_block(name, input, in, {out, kernel, relu, {}}, gen);
    b.stride = stride;
    net.blocks.push_back(std::move(b));
    return static_cast<int>(net.blocks.size()) - 1;
  };
  int x = conv("conv1", Block::kNetworkInput, 3, 16, 3, 1, true);
  int64_t c = 16;
  for (int stage = 0; stage < 3; ++stage) {
    const int64_t out = int64_t{16} << stage;
    for (int unit = 0; unit < 3; ++unit) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(unit) + ".";
      const int stride = stage > 0 && unit == 0 ? 2 : 1;
      const int a = conv(p + "conv1", x, c, out, 3, stride, true);
      const int r = conv(p + "conv2", a, out, out, 3, 1, false);
      const int shortcut = stride == 1 && c == out ? x : conv(p + "shortcut", x, c, out, 1, stride, false);
      Block add;
      add.name = p + "add";
      add.op = Op::Add;
      add.inputs = {r, shortcut};
      add.relu = true;
      net.blocks.push_back(std::move(add));
      x = static_cast<int>(net.blocks.size()) - 1;
      c = out;
    }
  }
  net.blocks.push_back(gap_block("gap", x));
  Block fc;
  fc.name = "fc";
  fc.op = Op::Linear;
  fc.inputs = {static_cast<int>(net.blocks.size()) - 1};
  fc.out_channels = 10;
  const double bound = 1.0 / std::sqrt(static_cast<double>(c));
  fc.weight = torch::empty({10, c}).uniform_(-bound, bound, gen);
  fc.bias = torch::zeros({10});
  net.blocks.push_back(std::move(fc));
  net.validate();
  return net;
}

}  // namespace

const std::vector<std::string>& zoo_names() {
  static const std::vector<std::string> names{"mnist-cnn",     "mnist-cnn-opt", "cifar-cnn",
                                              "cifar-cnn-opt", "mnist-teacher", "cifar-resnet20"};
  return names;
}

std::string zoo_description(const std::string& arch) {
  if (arch == "mnist-cnn") return "MNIST CNN of Table I (1x28x28 input)";
  if (arch == "mnist-cnn-opt") return "MNIST CNN, global average pooling behind the 1x1 conv (V-E1)";
  if (arch == "cifar-cnn") return "CIFAR-10 CNN of Table I (3x32x32 input)";
  if (arch == "cifar-cnn-opt") return "CIFAR-10 CNN, global average pooling behind the 1x1 conv (V-E1)";
  if (arch == "mnist-teacher")
    return "not in Table I: the CIFAR-10 CNN's convolutions on 1x28x28 input, a teacher for "
           "distilling mnist-cnn (train --teacher)";
  if (arch == "cifar-resnet20")
    return "not in Table I: ResNet-20 of He et al. 2016 (3x32x32 input; projection shortcuts), "
           "residual additions";
  return "";
}

Network build_zoo(const std::string& arch, uint64_t seed) {
  if (arch == "mnist-cnn") return mnist_cnn(arch, false, seed);
  if (arch == "mnist-cnn-opt") return mnist_cnn(arch, true, seed);
  if (arch == "cifar-cnn") return cifar_cnn(arch, false, seed);
  if (arch == "cifar-cnn-opt") return cifar_cnn(arch, true, seed);
  if (arch == "mnist-teacher") return mnist_teacher(arch, seed);
  if (arch == "cifar-resnet20") return cifar_resnet20(arch, seed);
  fail("unknown architecture '", arch, "': expected one of ", join(zoo_names()));
}

}  // namespace flipguard
