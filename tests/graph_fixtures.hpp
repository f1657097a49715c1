#pragma once
/// \file
/// Small residual and depthwise networks on MNIST's 1x28x28 images, trained for a few seconds so
/// that faults change answers (random weights would not do), quantized, with their golden run:
/// what the engine, relevance and hardening tests check the new blocks on. The graphs hold every
/// new case: an identity and a projection shortcut, a site read by two blocks, an addition with
/// and without ReLU, depthwise convolutions with stride 1 and 2, ReLU6, hardtanh and a linear
/// bottleneck.
#include <flipguard/data.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/train.hpp>

#include <cmath>
#include <memory>
#include <string>

namespace flipguard::test {

/// A convolution block with Kaiming-uniform weights from `gen`.
inline Block graph_conv(const std::string& name, int input, int64_t in, int64_t out, int kernel,
                        int stride, int groups, torch::Generator& gen) {
  Block b;
  b.name = name;
  b.op = Op::Conv;
  b.inputs = {input};
  b.out_channels = out;
  b.kernel = kernel;
  b.stride = stride;
  b.padding = kernel / 2;
  b.groups = groups;
  const double bound = std::sqrt(6.0 / (static_cast<double>(in / groups) * kernel * kernel));
  b.weight = torch::empty({out, in / groups, kernel, kernel}).uniform_(-bound, bound, gen);
  b.bias = torch::zeros({out});
  return b;
}

inline Block graph_add(const std::string& name, std::vector<int> inputs, bool relu) {
  Block b;
  b.name = name;
  b.op = Op::Add;
  b.inputs = std::move(inputs);
  b.relu = relu;
  return b;
}

inline Block graph_head(Network& net, int input, int64_t c, torch::Generator& gen) {
  Block gap;
  gap.name = "gap";
  gap.op = Op::Pool;
  gap.inputs = {input};
  gap.pool = PoolSpec::global_avg();
  net.blocks.push_back(gap);
  Block fc;
  fc.name = "fc";
  fc.op = Op::Linear;
  fc.inputs = {static_cast<int>(net.blocks.size()) - 1};
  fc.out_channels = 10;
  fc.weight = torch::empty({10, c}).uniform_(-1 / std::sqrt(double(c)), 1 / std::sqrt(double(c)), gen);
  fc.bias = torch::zeros({10});
  return fc;
}

inline Network graph_base(const std::string& arch) {
  Network net;
  net.arch = arch;
  net.input = {1, 28, 28};
  net.input_mean = {0.1307};
  net.input_std = {0.3081};
  return net;
}

/// conv 8 (max pooling 2) -> [conv 8, conv 8] + identity, ReLU -> [conv 16 stride 2, conv 16] +
/// projection 1x1 stride 2, ReLU -> global average pooling -> fully connected. 10 blocks.
inline Network residual_graph(uint64_t seed = 3) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Network net = graph_base("test-residual");
  auto add = [&](Block b) {
    net.blocks.push_back(std::move(b));
    return static_cast<int>(net.blocks.size()) - 1;
  };
  Block stem = graph_conv("stem", Block::kNetworkInput, 1, 8, 3, 1, 1, gen);
  stem.relu = true;
  stem.post = PoolSpec::max(2, 2);
  const int s = add(stem);
  Block a1 = graph_conv("a.conv1", s, 8, 8, 3, 1, 1, gen);
  a1.relu = true;
  const int a2 = add(graph_conv("a.conv2", add(a1), 8, 8, 3, 1, 1, gen));
  const int a = add(graph_add("a.add", {a2, s}, true));
  Block b1 = graph_conv("b.conv1", a, 8, 16, 3, 2, 1, gen);
  b1.relu = true;
  const int b2 = add(graph_conv("b.conv2", add(b1), 16, 16, 3, 1, 1, gen));
  const int sc = add(graph_conv("b.shortcut", a, 8, 16, 1, 2, 1, gen));
  const int b = add(graph_add("b.add", {b2, sc}, true));
  net.blocks.push_back(graph_head(net, b, 16, gen));
  net.validate();
  return net;
}

/// MobileNetV2's pieces: conv 8 stride 2, ReLU6 -> inverted residual [expand 1x1 16 ReLU6,
/// depthwise 3x3 ReLU6, project 1x1 8] + identity (no ReLU) -> depthwise 3x3 stride 2 with
/// hardtanh(-1, 1) -> 1x1 16 ReLU6 -> global average pooling -> fully connected. 9 blocks.
inline Network depthwise_graph(uint64_t seed = 4) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Network net = graph_base("test-depthwise");
  auto add = [&](Block b, bool relu, double lo, double hi) {
    b.relu = relu;
    b.clamp_min = lo;
    b.clamp_max = hi;
    net.blocks.push_back(std::move(b));
    return static_cast<int>(net.blocks.size()) - 1;
  };
  const double inf = INFINITY;
  const int s = add(graph_conv("stem", Block::kNetworkInput, 1, 8, 3, 2, 1, gen), true, -inf, 6);
  const int e = add(graph_conv("ir.expand", s, 8, 16, 1, 1, 1, gen), true, -inf, 6);
  const int d = add(graph_conv("ir.depthwise", e, 16, 16, 3, 1, 16, gen), true, -inf, 6);
  const int p = add(graph_conv("ir.project", d, 16, 8, 1, 1, 1, gen), false, -inf, inf);
  const int r = add(graph_add("ir.add", {s, p}, false), false, -inf, inf);
  const int d2 = add(graph_conv("dw2", r, 8, 8, 3, 2, 8, gen), false, -1, 1);
  const int c = add(graph_conv("pw2", d2, 8, 16, 1, 1, 1, gen), true, -inf, 6);
  net.blocks.push_back(graph_head(net, c, 16, gen));
  net.validate();
  return net;
}

/// `net` trained for one epoch on the first 3,000 MNIST training images (batch normalization
/// folded in), quantized to 8 bits on the first `images` test images, with its golden run on
/// them.
struct TrainedGraph {
  Network net;
  std::unique_ptr<QuantizedNetwork> q;
  std::unique_ptr<GoldenRun> g;
  TrainedGraph(Network n, int64_t images) : net(std::move(n)) {
    const Dataset train = load_dataset(parse_data_spec("mnist"), Split::Train).head(3000);
    const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(images);
    TrainOptions o;
    o.epochs = 1;
    o.lr = 0.05;
    o.batch_size = 64;
    o.warmup_epochs = 0.2;
    o.log_every = 0;
    train_network(net, train, Dataset{}, o, [](const std::string&) {});
    QuantOptions qo;
    qo.refine = false;
    q = std::make_unique<QuantizedNetwork>(net, calibrate(net, test.images, qo));
    g = std::make_unique<GoldenRun>(*q, test.images, test.labels, 7);
  }
};

}  // namespace flipguard::test
