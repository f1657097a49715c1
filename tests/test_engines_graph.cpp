// The engines on residual and depthwise networks (additions, grouped and depthwise convolutions,
// ReLU6 and hardtanh): the incremental and the cone engine against the reference engine and a
// plain re-run of the whole network, fault by fault (the cone engine also image by image, pruning
// on and off, vector instructions on and off).
#include <flipguard/fault.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include "fault_fixtures.hpp"
#include "graph_fixtures.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

using namespace flipguard;
using namespace flipguard::test;

namespace {

/// Faults of every site and every bit: per (site, bit) the first and the last neuron, the most
/// active neuron of an image and `random` random neurons.
std::vector<std::vector<Fault>> every_site_and_bit(const Network& net, const GoldenRun& g,
                                                   uint64_t seed, int random) {
  Rng rng(seed);
  std::vector<std::vector<Fault>> sets;
  const auto shapes = net.shapes();
  for (int s : net.sites()) {
    const int64_t n = shapes[s].numel();
    for (int bit = 0; bit < 8; ++bit) {
      const int64_t image = bit % g.correct();
      std::vector<int64_t> picks{0, n - 1, g.stored(s)[image].flatten().argmax().item<int64_t>()};
      for (int k = 0; k < random; ++k) picks.push_back(static_cast<int64_t>(rng.below(n)));
      for (int64_t idx : picks) sets.push_back({{s, idx, bit}});
    }
  }
  return sets;
}

/// What the engines must agree on, fault set by fault set.
struct Outcomes {
  std::vector<int64_t> counts;           // failing images
  std::vector<torch::Tensor> per_image;  // bool, one per correct image
};

/// The reference engine's outcomes, each count checked against a plain re-run of the network.
Outcomes reference_outcomes(const QuantizedNetwork& q, const GoldenRun& g,
                            const std::vector<std::vector<Fault>>& sets, const std::string& what) {
  ReferenceEngine ref(q, g, FaultTarget::Activations);
  Outcomes o;
  for (const auto& f : sets) {
    o.per_image.push_back(ref.failed(f));
    o.counts.push_back(o.per_image.back().sum().item<int64_t>());
    EXPECT_EQ(full_rerun_failures(q, g, f), o.counts.back())
        << what << ": site " << f[0].block << " neuron " << f[0].index << " bit " << f[0].bit;
  }
  return o;
}

/// The cone engine, image by image (one image per call), against the reference's per-image
/// outcomes.
void expect_cone_per_image(const QuantizedNetwork& q, const GoldenRun& g,
                           const std::vector<std::vector<Fault>>& sets, const Outcomes& want,
                           const std::string& what) {
  ConeEngine cone(q, g, FaultTarget::Activations);
  for (int64_t i = 0; i < g.correct(); ++i) {
    std::vector<int64_t> counts(sets.size(), 0);
    cone.failures_over(sets, i, i + 1, 1, counts);
    for (size_t k = 0; k < sets.size(); ++k)
      ASSERT_EQ(counts[k] != 0, want.per_image[k][i].item<bool>())
          << what << ": image " << i << " site " << sets[k][0].block << " neuron "
          << sets[k][0].index << " bit " << sets[k][0].bit;
  }
}

/// Every engine on `sets`; returns how many fault sets make an image fail.
int64_t expect_engines_agree(const QuantizedNetwork& q, const GoldenRun& g,
                             const std::vector<std::vector<Fault>>& sets,
                             const std::string& what) {
  const Outcomes want = reference_outcomes(q, g, sets, what);
  IncrementalEngine inc(q, g, FaultTarget::Activations);
  for (size_t k = 0; k < sets.size(); ++k)
    EXPECT_EQ(inc.failures(sets[k]), want.counts[k])
        << what << " (incremental): site " << sets[k][0].block << " neuron " << sets[k][0].index
        << " bit " << sets[k][0].bit;
  for (const auto& [prune, st] : expect_cone_counts(q, g, sets, want.counts, 2, what)) {
    EXPECT_EQ(st.pairs, static_cast<int64_t>(sets.size()) * g.correct()) << what;
    EXPECT_EQ(st.pairs, st.vanished + st.pruned + st.scored) << what;
    EXPECT_GT(st.scored, 0) << what << ": changes must reach the class scores";
    if (!prune) EXPECT_EQ(st.pruned, 0) << what;
  }
  expect_cone_per_image(q, g, sets, want, what);
  return std::count_if(want.counts.begin(), want.counts.end(), [](int64_t c) { return c > 0; });
}

/// Images of `net`'s input shape, labelled by the network's own golden answers.
struct RandomImages {
  QuantizedNetwork q;
  GoldenRun g;
  RandomImages(const Network& net, const torch::Tensor& x)
      : q(net, calibrate(net, x, options())), g(q, x, q.scores(x).argmax(1), 16) {}
  static QuantOptions options() {
    QuantOptions o;
    o.refine = false;
    return o;
  }
};

/// `net` trained (TrainedGraph, 60 images): every engine on faults of every site and bit.
void expect_trained_graph(Network net, uint64_t seed, const std::string& what) {
  const TrainedGraph t(std::move(net), 60);
  std::string why;
  ASSERT_TRUE(ConeEngine(*t.q, *t.g, FaultTarget::Activations).supported(&why)) << why;
  const auto sets = every_site_and_bit(t.net, *t.g, seed, 2);
  EXPECT_GE(expect_engines_agree(*t.q, *t.g, sets, what), 20)
      << what << ": the comparison needs faults that change answers";
}

}  // namespace

// An identity and a projection shortcut: a change of the stem's site flows along the residual
// branch and the shortcut and meets itself again at the addition; additions with ReLU.
TEST(ConeGraph, IdenticalToTheReferenceOnAResidualNetwork) {
  expect_trained_graph(residual_graph(), 51, "residual");
}

// Depthwise convolutions (stride 1 and 2), ReLU6, hardtanh(-1, 1), a linear bottleneck and an
// addition without ReLU.
TEST(ConeGraph, IdenticalToTheReferenceOnADepthwiseNetwork) {
  expect_trained_graph(depthwise_graph(), 52, "depthwise");
}

// What the MNIST graphs lack: a grouped convolution with several channels per group and max
// pooling behind it, a clamp on both sides, a max pooling block as a shortcut, an addition of
// three inputs, and a fully-connected last block over a whole map. Random weights and images,
// every neuron and bit.
TEST(ConeGraph, GroupsPoolingAndThreeInputAdditionsEveryNeuronAndBit) {
  torch::manual_seed(7);
  Network net;
  net.arch = "grouped-test";
  net.input = {2, 8, 8};
  net.input_mean = {0.5, 0.5};
  net.input_std = {0.25, 0.25};
  auto add = [&](Block b) {
    net.blocks.push_back(std::move(b));
    return static_cast<int>(net.blocks.size()) - 1;
  };
  Block stem = random_conv("stem", Block::kNetworkInput, 2, 8, 3, 1, 1, 1, true);
  stem.clamp_max = 6;  // ReLU6; 8 x 8 x 8
  const int s = add(stem);
  Block grouped = random_conv("grouped", s, 4, 8, 3, 1, 1, 1, false);
  grouped.groups = 2;
  grouped.clamp_min = -1;
  grouped.clamp_max = 1;
  grouped.post = PoolSpec::max(2, 2);  // 8 x 4 x 4
  const int gr = add(grouped);
  Block pool;
  pool.name = "pool";
  pool.op = Op::Pool;
  pool.inputs = {s};
  pool.pool = PoolSpec::max(2, 2);
  const int p = add(pool);
  const int a = add(graph_add("add2", {gr, p}, true));
  Block dw = random_conv("depthwise", a, 1, 8, 3, 1, 1, 1, true);
  dw.groups = 8;
  dw.clamp_max = 6;
  const int d = add(dw);
  add(graph_add("add3", {a, d, p}, false));
  Block fc;
  fc.name = "fc";
  fc.op = Op::Linear;
  fc.inputs = {static_cast<int>(net.blocks.size()) - 1};
  fc.out_channels = 5;
  fc.weight = torch::randn({5, 128}) * 0.1;
  fc.bias = torch::randn({5}) * 0.1;
  add(fc);
  net.validate();
  auto gen = at::detail::createCPUGenerator(9);
  const RandomImages r(net, torch::randint(0, 256, {24, 2, 8, 8}, gen, torch::kUInt8));
  std::string why;
  ASSERT_TRUE(ConeEngine(r.q, r.g, FaultTarget::Activations).supported(&why)) << why;
  std::vector<std::vector<Fault>> sets;
  for (int site : net.sites())
    for (int64_t i = 0; i < net.shapes()[site].numel(); ++i)
      for (int bit = 0; bit < 8; ++bit) sets.push_back({{site, i, bit}});
  EXPECT_GE(expect_engines_agree(r.q, r.g, sets, "grouped"), 50)
      << "the comparison needs faults that change answers";
}

// The zoo's cifar-resnet20 (projection shortcuts, nine additions, a global average pooling
// block), random weights on random images labelled with their own golden answers.
TEST(ConeGraph, IdenticalToTheReferenceOnCifarResnet20) {
  const RandomCifar r("cifar-resnet20");
  std::string why;
  ASSERT_TRUE(ConeEngine(r.q, r.g, FaultTarget::Activations).supported(&why)) << why;
  const auto sets = random_single_faults(r.net, r.g, 61, 6);
  expect_engines_agree(r.q, r.g, sets, "cifar-resnet20");
}
