#pragma once
/// \file
/// Small networks, trained models and fault sets that the fault, campaign, engine and range
/// tests share. The expected failure rates of the tiny networks are worked out by hand in the
/// tests that use them.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

namespace flipguard::test {

inline Block conv1x1(const std::string& name, std::vector<int> inputs, std::vector<std::vector<float>> w,
              std::vector<float> bias, bool relu) {
  Block b;
  b.name = name;
  b.op = Op::Conv;
  b.inputs = std::move(inputs);
  b.out_channels = static_cast<int64_t>(w.size());
  b.kernel = 1;
  const int64_t in = static_cast<int64_t>(w[0].size());
  b.weight = torch::empty({b.out_channels, in, 1, 1});
  for (int64_t o = 0; o < b.out_channels; ++o)
    for (int64_t i = 0; i < in; ++i) b.weight[o][i][0][0] = w[o][i];
  b.bias = torch::tensor(bias);
  b.relu = relu;
  return b;
}

/// Every format 8-bit with fractional length 0: codes are the real values, pixel 255 is code 1.
inline QuantFormats integer_formats(const Network& net, bool is_signed) {
  QuantFormats q;
  q.input = {8, 0, true};
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    q.act.push_back({8, 0, is_signed});
    q.weight.push_back({8, 0, true});
  }
  return q;
}

inline Network tiny_base() {
  Network net;
  net.arch = "tiny";
  net.input = {2, 1, 1};
  net.input_mean = {0, 0};
  net.input_std = {1, 1};
  return net;
}

/// Site 0 = relu(identity(x)) = (a, b); scores = (a + 1, 3 b).
inline Network tiny_chain() {
  Network net = tiny_base();
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, {0, 0}, true));
  net.blocks.push_back(conv1x1("scores", {0}, {{1, 0}, {0, 3}}, {1, 0}, false));
  net.validate();
  return net;
}

/// Site 0 = (a, b) is read by two blocks: site 1 = relu(-(a, b)) and the concatenation
/// site 2 = (a, b, a', b'); scores = (2 a + 1 + 2 a', 6 b).
inline Network tiny_branch() {
  Network net = tiny_base();
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, {0, 0}, true));
  net.blocks.push_back(conv1x1("neg", {0}, {{-1, 0}, {0, -1}}, {0, 0}, true));
  Block cat;
  cat.name = "cat";
  cat.op = Op::Concat;
  cat.inputs = {0, 1};
  net.blocks.push_back(cat);
  net.blocks.push_back(conv1x1("scores", {2}, {{2, 0, 2, 0}, {0, 6, 0, 0}}, {1, 0}, false));
  net.validate();
  return net;
}

/// Images A..E with input codes (1,0), (0,1), (1,1), (0,0), (1,0) and labels 0, 1, 1, 0, 1.
/// E is A with the wrong label: never correct, so never counted.
struct TinyData {
  torch::Tensor images, labels;
  TinyData() {
    images = torch::tensor({255, 0, 0, 255, 255, 255, 0, 0, 255, 0}, torch::kUInt8).view({5, 2, 1, 1});
    labels = torch::tensor({0, 1, 1, 0, 1}, torch::kInt64);
  }
};

/// A tiny network quantized with integer formats, and its golden run on TinyData.
struct Tiny {
  Network net;
  QuantizedNetwork q;
  GoldenRun g;
  Tiny(Network n, bool is_signed, int64_t chunk = 500)
      : net(std::move(n)), q(net, integer_formats(net, is_signed)),
        g(q, TinyData().images, TinyData().labels, chunk) {}
};

inline double rate(const QuantizedNetwork& q, const GoldenRun& g, FaultTarget t, std::vector<Fault> f) {
  ReferenceEngine e(q, g, t);
  return static_cast<double>(e.failures(f)) / static_cast<double>(g.correct());
}

/// A trained 6-epoch MNIST model (tests/data/mnist-e6/), re-quantized with the given signedness on the first
/// MNIST test images, and its golden run on them. Random weights would not do: their class
/// scores hardly depend on the image, and no fault changes an answer.
struct ZooCase {
  Network net;
  std::unique_ptr<QuantizedNetwork> q;
  std::unique_ptr<GoldenRun> g;
  ZooCase(const std::string& arch, int64_t images, bool is_signed = true) {
    net = load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/" + arch + "-mnist.fgm").net;
    const Dataset d = load_dataset(parse_data_spec("mnist"), Split::Test).head(images);
    QuantOptions o;
    o.refine = false;
    o.is_signed = is_signed;
    q = std::make_unique<QuantizedNetwork>(net, calibrate(net, d.images, o));
    g = std::make_unique<GoldenRun>(*q, d.images, d.labels, 7);
  }
};

/// The plainest possible evaluation: every block from the input, the flips applied where the
/// faulty site is written; nothing taken from the golden run.
inline int64_t full_rerun_failures(const QuantizedNetwork& q, const GoldenRun& g,
                            const std::vector<Fault>& faults) {
  torch::NoGradGuard no_grad;
  const auto& blocks = q.network().blocks;
  std::vector<torch::Tensor> out;
  const auto x = g.codes(Block::kNetworkInput, 0, g.correct());
  for (size_t b = 0; b < blocks.size(); ++b) {
    std::vector<torch::Tensor> in;
    for (int j : blocks[b].inputs) in.push_back(j == Block::kNetworkInput ? x : out[j]);
    auto y = q.forward_block(static_cast<int>(b), in).contiguous();
    for (const Fault& f : faults)
      if (f.block == static_cast<int>(b)) {
        auto col = y.view({y.size(0), -1}).select(1, f.index);
        col.copy_(flip_bits(col, f.bit, q.formats().act[b]));
      }
    out.push_back(y);
  }
  return out.back().flatten(1).argmax(1).ne(g.correct_labels()).sum().item<int64_t>();
}

/// A CIFAR-10 zoo network, with random weights or the trained reference model (models/),
/// quantized on 9 random images and run on them, each labelled with its own golden answer (so
/// every image counts; the CIFAR-10 images need not be there).
struct RandomCifar {
  Network net;
  QuantizedNetwork q;
  GoldenRun g;
  explicit RandomCifar(const std::string& arch, bool trained = false)
      : net(trained ? load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/models/" + arch +
                                 "-cifar10.fgm")
                          .net
                    : build_zoo(arch, 5)),
        q(net, calibrate(net, images(), options())),
        g(q, images(), q.scores(images()).argmax(1), 4) {}
  static torch::Tensor images() {
    auto gen = at::detail::createCPUGenerator(17);
    return torch::randint(0, 256, {9, 3, 32, 32}, gen, torch::kUInt8);
  }
  static QuantOptions options() {
    QuantOptions o;
    o.refine = false;
    return o;
  }
};

/// Random single faults of every site: corners, the most active neuron of an image, random
/// neurons; the MSB and random bit positions.
inline std::vector<std::vector<Fault>> random_single_faults(const Network& net, const GoldenRun& g,
                                                     uint64_t seed, int per_site) {
  Rng rng(seed);
  std::vector<std::vector<Fault>> sets;
  for (int s : net.sites()) {
    const int64_t n = net.shapes()[s].numel();
    for (int k = 0; k < per_site; ++k) {
      const int bit = k % 3 == 2 ? static_cast<int>(rng.below(8)) : 7;
      const int64_t idx = k == 0   ? 0
                          : k == 1 ? n - 1
                          : k < 6  ? g.stored(s)[k % g.correct()].flatten().argmax().item<int64_t>()
                                   : static_cast<int64_t>(rng.below(n));
      sets.push_back({{s, idx, bit}});
    }
  }
  return sets;
}

/// The cone engine's counts for `sets` over all correct images, in two image ranges.
inline std::vector<int64_t> cone_counts(ConeEngine& e, const std::vector<std::vector<Fault>>& sets,
                                 int64_t images, int threads) {
  std::vector<int64_t> counts(sets.size(), 0);
  e.failures_over(sets, 0, images / 3, threads, counts);
  e.failures_over(sets, images / 3, images, threads, counts);
  return counts;
}

// The cone engine with pruning on and off, vector instructions on and off: every combination must
// give the counts `want`. Returns the statistics of each run, with whether it pruned.
inline std::vector<std::pair<bool, ConeStats>> expect_cone_counts(
    const QuantizedNetwork& q, const GoldenRun& g, const std::vector<std::vector<Fault>>& sets,
    const std::vector<int64_t>& want, int threads, const std::string& what) {
  std::vector<std::pair<bool, ConeStats>> stats;
  for (const bool prune : {true, false})
    for (const bool simd : {true, false}) {
      EngineOptions eo;
      eo.prune = prune;
      eo.simd = simd;
      ConeEngine cone(q, g, FaultTarget::Activations, eo);
      EXPECT_TRUE(cone.supported()) << what;
      EXPECT_TRUE(cone.image_major(sets)) << what;
      const auto got = cone_counts(cone, sets, g.correct(), threads);
      for (size_t k = 0; k < sets.size(); ++k)
        EXPECT_EQ(got[k], want[k]) << what << " prune " << prune << " simd " << simd << " site "
                                   << sets[k][0].block << " neuron " << sets[k][0].index
                                   << " bit " << sets[k][0].bit;
      stats.emplace_back(prune, cone.stats());
    }
  return stats;
}

/// A sampled campaign of sites 1 and 2 of mnist-cnn-opt, a few hundred faults.
inline CampaignOptions sampled_sites_1_2() {
  CampaignOptions o;
  o.sites = {1, 2};
  o.campaign = "sampled";
  o.error = 0.05;
  return o;
}

inline Block random_conv(const std::string& name, int input, int64_t in_c, int64_t out_c, int kernel,
                  int stride, int padding, int dilation, bool relu) {
  Block b;
  b.name = name;
  b.op = Op::Conv;
  b.inputs = {input};
  b.out_channels = out_c;
  b.kernel = kernel;
  b.stride = stride;
  b.padding = padding;
  b.dilation = dilation;
  b.weight = torch::randn({out_c, in_c, kernel, kernel}) * (1.5 / std::sqrt(double(in_c * kernel * kernel)));
  b.bias = torch::randn({out_c}) * 0.1;
  b.relu = relu;
  return b;
}

/// SqueezeNet's graph in small: a strided convolution with max pooling behind it (ceil_mode),
/// fire modules (a 1x1 squeeze read by a 1x1 and a 3x3 expand, concatenated), a concatenation
/// with max pooling behind it (ceil_mode), a padded max pooling block (ceil_mode), a dilated
/// convolution, and a 1x1 convolution with ReLU and global average pooling as the last block.
inline Network mini_squeezenet() {
  torch::manual_seed(11);
  Network net;
  net.arch = "mini-squeezenet";
  net.input = {3, 25, 25};
  net.input_mean = {0.5, 0.5, 0.5};
  net.input_std = {0.25, 0.25, 0.25};
  auto add = [&](Block b) {
    net.blocks.push_back(std::move(b));
    return static_cast<int>(net.blocks.size()) - 1;
  };
  auto fire = [&](const std::string& name, int input, int64_t in_c, int64_t sq, int64_t ex) {
    const int s = add(random_conv(name + ".squeeze", input, in_c, sq, 1, 1, 0, 1, true));
    const int e1 = add(random_conv(name + ".expand1x1", s, sq, ex, 1, 1, 0, 1, true));
    const int e3 = add(random_conv(name + ".expand3x3", s, sq, ex, 3, 1, 1, 1, true));
    Block cat;
    cat.name = name + ".cat";
    cat.op = Op::Concat;
    cat.inputs = {e1, e3};
    return add(cat);
  };
  Block first = random_conv("conv", Block::kNetworkInput, 3, 8, 3, 2, 0, 1, true);
  first.post = {PoolKind::Max, 3, 2, 0, true};  // 12 x 12 -> 6 x 6 (5 x 5 without ceil_mode)
  const int c0 = add(first);
  const int f1 = fire("fire1", c0, 8, 4, 6);
  net.blocks[f1].post = {PoolKind::Max, 3, 2, 0, true};  // 6 x 6 -> 3 x 3
  Block pool;
  pool.name = "pool";
  pool.op = Op::Pool;
  pool.inputs = {f1};
  pool.pool = {PoolKind::Max, 2, 2, 1, true};  // 3 x 3 -> 2 x 2 (padded, ceil_mode)
  const int p = add(pool);
  const int f2 = fire("fire2", p, 12, 4, 5);
  const int d = add(random_conv("dilated", f2, 10, 8, 3, 1, 2, 2, true));
  Block last = random_conv("classifier", d, 8, 6, 1, 1, 0, 1, true);
  last.post = PoolSpec::global_avg();
  add(last);
  net.validate();
  return net;
}

}  // namespace flipguard::test
