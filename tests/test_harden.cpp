// Resilience optimization of the network itself (section IV): the architectural optimization.
#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <cmath>

using namespace flipguard;

namespace {

/// The class scores of both networks on the same random inputs.
void expect_same_function(const Network& a, const Network& b, int64_t n = 8) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(7);
  const auto x = torch::randn({n, a.input.c, a.input.h, a.input.w});
  const auto ya = a.forward(x), yb = b.forward(x);
  ASSERT_EQ(ya.sizes(), yb.sizes());
  // float32 sums in another order: agreement to rounding of the scores' magnitude.
  const double scale = ya.abs().max().item<double>();
  EXPECT_GT(scale, 0);
  EXPECT_LT((ya - yb).abs().max().item<double>(), 1e-5 * std::max(1.0, scale));
}

/// Gives the last block (the class-score convolution) a non-zero bias, so that moving the
/// average behind it is checked with a bias too.
Network with_bias(Network net) {
  torch::manual_seed(3);
  net.blocks.back().bias = torch::randn({net.blocks.back().out_channels});
  return net;
}

bool same_structure(const Network& a, const Network& b) {
  if (a.blocks.size() != b.blocks.size()) return false;
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const Block &x = a.blocks[i], &y = b.blocks[i];
    if (x.op != y.op || x.inputs != y.inputs || x.kernel != y.kernel || x.relu != y.relu ||
        !(x.post == y.post) || !(x.pool == y.pool) || x.out_channels != y.out_channels)
      return false;
  }
  return true;
}

}  // namespace

TEST(Architecture, FindsTheBottleneckSitesOfTableI) {
  const auto mnist = find_bottlenecks(build_zoo("mnist-cnn", 1));
  ASSERT_EQ(mnist.size(), 1u);
  EXPECT_EQ(mnist[0].block, 3);  // the 64x1x1 global average pooling
  EXPECT_EQ(mnist[0].shape.numel(), 64);
  EXPECT_EQ(mnist[0].median_neurons, 12544);
  const auto cifar = find_bottlenecks(build_zoo("cifar-cnn", 1));
  ASSERT_EQ(cifar.size(), 1u);
  EXPECT_EQ(cifar[0].block, 6);
  EXPECT_EQ(cifar[0].shape.numel(), 128);
  // The architecture-optimized forms have none; a looser ratio finds the 4096-neuron site.
  EXPECT_TRUE(find_bottlenecks(build_zoo("mnist-cnn-opt", 1)).empty());
  EXPECT_TRUE(find_bottlenecks(build_zoo("cifar-cnn-opt", 1)).empty());
  ArchitectureOptions loose;
  loose.bottleneck_ratio = 0.6;
  const auto more = find_bottlenecks(build_zoo("cifar-cnn-opt", 1), loose);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].shape.numel(), 64 * 8 * 8);
  loose.bottleneck_ratio = 0;
  EXPECT_THROW(find_bottlenecks(build_zoo("cifar-cnn", 1), loose), Error);
}

TEST(Architecture, TurnsTheZooNetworksIntoTheirOptimizedFormsWithTheSameFunction) {
  for (const std::string arch : {"mnist-cnn", "cifar-cnn"}) {
    SCOPED_TRACE(arch);
    const Network net = with_bias(build_zoo(arch, 5));
    ArchitectureReport report;
    const Network opt = optimize_architecture(net, report);
    EXPECT_EQ(report.moved, 1);
    ASSERT_EQ(report.bottlenecks.size(), 1u);
    EXPECT_TRUE(report.bottlenecks[0].fixed);
    EXPECT_NE(report.bottlenecks[0].action.find("moved"), std::string::npos);
    EXPECT_EQ(opt.arch, arch + "-opt");
    // Exactly the zoo's optimized form (section V-E1), with the same weights.
    EXPECT_TRUE(same_structure(opt, build_zoo(arch + "-opt", 5)));
    const auto pa = net.parameters(), pb = opt.parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i]));
    expect_same_function(net, opt);
    // The input is left as it was.
    EXPECT_EQ(net.blocks.size(), opt.blocks.size() + 1);
    // Nothing left to do the second time.
    ArchitectureReport again;
    const Network twice = optimize_architecture(opt, again);
    EXPECT_EQ(again.moved, 0);
    EXPECT_TRUE(again.bottlenecks.empty());
    EXPECT_EQ(twice.arch, opt.arch);
  }
}

TEST(Architecture, FullyConnectedReaderBecomesA1x1Convolution) {
  Network net = build_zoo("mnist-cnn", 2);
  Block& scores = net.blocks.back();
  scores.op = Op::Linear;
  scores.weight = scores.weight.reshape({10, 64});
  scores.kernel = 1;
  net = with_bias(net);
  net.validate();
  ArchitectureReport report;
  const Network opt = optimize_architecture(net, report);
  EXPECT_EQ(report.moved, 1);
  EXPECT_EQ(opt.blocks.back().op, Op::Conv);
  EXPECT_EQ(opt.blocks.back().weight.sizes(), (std::vector<int64_t>{10, 64, 1, 1}));
  EXPECT_EQ(opt.blocks.back().post.kind, PoolKind::GlobalAvg);
  expect_same_function(net, opt);
}

TEST(Architecture, PoolingBehindAConvolutionMovesToItsReader) {
  // conv + ReLU + global average pooling inside one block, read by the 1x1 scores convolution.
  Network net = build_zoo("mnist-cnn", 3);
  net.blocks[2].post = PoolSpec::global_avg();
  net.blocks.erase(net.blocks.begin() + 3);
  net.blocks.back().inputs = {2};
  net = with_bias(net);
  net.validate();
  ArchitectureReport report;
  const Network opt = optimize_architecture(net, report);
  EXPECT_EQ(report.moved, 1);
  EXPECT_EQ(opt.blocks.size(), net.blocks.size());
  EXPECT_EQ(opt.blocks[2].post.kind, PoolKind::None);
  EXPECT_EQ(opt.shapes()[2], (Shape{64, 14, 14}));
  EXPECT_EQ(opt.blocks.back().post.kind, PoolKind::GlobalAvg);
  expect_same_function(net, opt);
}

TEST(Architecture, ReportsWhatItCannotFixAndLeavesItAlone) {
  // A ReLU behind the 1x1 reader does not commute with the average.
  Network relu = build_zoo("mnist-cnn", 4);
  relu.blocks.back().relu = true;
  ArchitectureReport report;
  Network out = optimize_architecture(relu, report);
  ASSERT_EQ(report.bottlenecks.size(), 1u);
  EXPECT_FALSE(report.bottlenecks[0].fixed);
  EXPECT_NE(report.bottlenecks[0].action.find("ReLU"), std::string::npos)
      << report.bottlenecks[0].action;
  EXPECT_EQ(report.moved, 0);
  EXPECT_EQ(out.arch, relu.arch);
  EXPECT_TRUE(same_structure(out, relu));

  // A 3x3 reader with padding mixes neighbours: not a 1x1 convolution.
  Network wide = build_zoo("mnist-cnn", 4);
  Block& s = wide.blocks.back();
  s.kernel = 3;
  s.padding = 1;
  s.weight = torch::zeros({10, 64, 3, 3});
  wide.validate();
  out = optimize_architecture(wide, report);
  EXPECT_EQ(report.moved, 0);
  EXPECT_NE(report.bottlenecks[0].action.find("3x3"), std::string::npos)
      << report.bottlenecks[0].action;

  // A small site that is not an average pooling (a 2x2 max pooling of a tiny map).
  Network maxp = build_zoo("mnist-cnn", 4);
  maxp.blocks[3].pool = PoolSpec::max(14, 14);
  maxp.validate();
  out = optimize_architecture(maxp, report);
  EXPECT_EQ(report.moved, 0);
  EXPECT_NE(report.bottlenecks[0].action.find("not the output of a global average"),
            std::string::npos);
}

TEST(Features, Eq6ScalesEachInputFeatureByTheMeanOverItsCriticality) {
  // K = 2 outputs, C = 3 input features, 1x2 kernels; η = (1, 2, 3): mean 2, factors 2, 1, 2/3.
  const auto w = torch::tensor({1.0f, -2.0f, 3.0f, 4.0f, -5.0f, 6.0f,  //
                                0.5f, 0.5f, -1.0f, 1.0f, 3.0f, -3.0f})
                     .view({2, 3, 1, 2});
  const auto eta = torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64);
  const auto got = adjust_weights(w, eta);
  const auto want = torch::tensor({2.0f, -4.0f, 3.0f, 4.0f, -10.0f / 3, 4.0f,  //
                                   1.0f, 1.0f, -1.0f, 1.0f, 2.0f, -2.0f})
                        .view({2, 3, 1, 2});
  EXPECT_EQ(got.sizes(), w.sizes());
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6)) << got;
  // A fully-connected reader of a 3 x 1 x 2 site: columns 2c, 2c+1 belong to feature c.
  const auto fc = adjust_weights(w.view({2, 6}), eta);
  EXPECT_TRUE(torch::allclose(fc, want.view({2, 6}), 1e-6, 1e-6)) << fc;
  // Equal criticality changes nothing.
  EXPECT_TRUE(torch::equal(adjust_weights(w, torch::full({3}, 0.7, torch::kFloat64)), w));
  // A feature no relevance reaches keeps its weights; the others use the mean over all C.
  const auto dead = adjust_weights(w, torch::tensor({0.0, 1.0, 2.0}, torch::kFloat64));
  EXPECT_TRUE(torch::equal(dead.select(1, 0), w.select(1, 0)));
  EXPECT_TRUE(torch::allclose(dead.select(1, 1), w.select(1, 1) * 1.0f, 1e-6, 1e-6));  // 1/1
  EXPECT_TRUE(torch::allclose(dead.select(1, 2), w.select(1, 2) * 0.5f, 1e-6, 1e-6));  // 1/2
}

TEST(Features, Eq6RejectsCriticalityThatDoesNotFit) {
  const auto w = torch::ones({2, 3, 3, 3});
  EXPECT_THROW(adjust_weights(w, torch::ones({4}, torch::kFloat64)), Error);
  EXPECT_THROW(adjust_weights(w, torch::tensor({1.0, -1.0, 1.0}, torch::kFloat64)), Error);
  EXPECT_THROW(adjust_weights(w, torch::tensor({1.0, std::nan(""), 1.0}, torch::kFloat64)), Error);
  EXPECT_THROW(adjust_weights(w, torch::zeros({3}, torch::kFloat64)), Error);
  EXPECT_THROW(adjust_weights(torch::ones({2, 7}), torch::ones({3}, torch::kFloat64)), Error);
  EXPECT_THROW(adjust_weights(torch::ones({3}), torch::ones({3}, torch::kFloat64)), Error);
}

// Eq. 5 computed with the adjusted weights gives every feature the same criticality, the mean of
// the old ones (the relevance of the reader's outputs held fixed): the equalization eq. 6 is for.
TEST(Features, Eq6EqualizesTheCriticalityOfEq5) {
  torch::manual_seed(11);
  const auto w = torch::randn({5, 4, 3, 3});
  const auto rho_next = torch::rand({5}, torch::kFloat64) + 0.1;
  const auto eta = feature_criticality(w, rho_next);
  const auto after = feature_criticality(adjust_weights(w.to(torch::kFloat64), eta), rho_next);
  EXPECT_TRUE(torch::allclose(after, torch::full({4}, eta.mean().item<double>(), torch::kFloat64),
                              1e-12, 1e-12))
      << eta << after;
  EXPECT_GT(normalized_sd(eta), 0.01);
  EXPECT_LT(normalized_sd(after), 1e-12);
  // The reciprocals of the factors average one (eq. 6's normalization).
  const auto factor = adjust_weights(torch::ones({1, 4, 1, 1}, torch::kFloat64), eta).view({4});
  EXPECT_NEAR((1.0 / factor).mean().item<double>(), 1.0, 1e-12);
}
