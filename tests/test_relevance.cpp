// Relevance propagation (eq. 2), mean relevance (eq. 3), feature relevance (eq. 4), feature
// criticality (eq. 5) and their validation statistics. The expected values of the small
// networks below are worked out by hand in the comments.
#include <flipguard/error.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>

#include <gtest/gtest.h>

#include "graph_fixtures.hpp"
#include "helpers.hpp"

#include <cmath>
#include <filesystem>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

constexpr double kTol = 1e-12;

torch::Tensor t64(std::vector<double> v, std::vector<int64_t> shape) {
  return torch::tensor(v, torch::kFloat64).view(shape);
}

void expect_near(const torch::Tensor& got, const torch::Tensor& want, double tol = kTol) {
  ASSERT_TRUE(got.sizes().equals(want.sizes())) << got.sizes() << " vs " << want.sizes();
  EXPECT_TRUE(torch::allclose(got.to(torch::kFloat64), want, 0, tol))
      << got << "\nexpected\n" << want;
}

Block layer(Op op, int kernel = 1, int stride = 1, int padding = 0) {
  Block b;
  b.name = "layer";
  b.op = op;
  b.kernel = kernel;
  b.stride = stride;
  b.padding = padding;
  return b;
}

Block conv1x1(const std::string& name, std::vector<int> inputs, std::vector<std::vector<float>> w,
              bool relu) {
  Block b;
  b.name = name;
  b.op = Op::Conv;
  b.inputs = std::move(inputs);
  b.out_channels = static_cast<int64_t>(w.size());
  const int64_t in = static_cast<int64_t>(w[0].size());
  b.weight = torch::empty({b.out_channels, in, 1, 1});
  for (int64_t o = 0; o < b.out_channels; ++o)
    for (int64_t i = 0; i < in; ++i) b.weight[o][i][0][0] = w[o][i];
  b.bias = torch::zeros({b.out_channels});
  b.relu = relu;
  return b;
}

Network base(Shape input) {
  Network net;
  net.arch = "tiny";
  net.input = input;
  net.input_mean.assign(input.c, 0.0);
  net.input_std.assign(input.c, 1.0);
  return net;
}

/// Every format 8-bit with fractional length 0: codes are the real values, pixel 255 is code 1.
QuantizedNetwork integer_quantized(const Network& net) {
  QuantFormats q;
  q.input = {8, 0, true};
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    q.act.push_back({8, 0, true});
    q.weight.push_back({8, 0, true});
  }
  return QuantizedNetwork(net, q);
}

/// input (a, b) -> site 0 = relu(a + 2b, 3a - b) -> scores (s0 + s1, 2 s0 - s1).
Network chain() {
  Network net = base({2, 1, 1});
  net.blocks.push_back(conv1x1("conv", {Block::kNetworkInput}, {{1, 2}, {3, -1}}, true));
  net.blocks.push_back(conv1x1("scores", {0}, {{1, 1}, {2, -1}}, false));
  net.validate();
  return net;
}

std::vector<double> vec(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Eq. 2, one layer at a time.
// ---------------------------------------------------------------------------------------------

// f = (1, 2, 0), w = [[1, -1, 2], [3, 1, -2]], r_out = (0.6, 0.4); w+ = [[1, 0, 2], [3, 1, 0]].
// z_0 = 1·1 + 2·0 + 0·2 = 1, z_1 = 1·3 + 2·1 + 0·0 = 5.
// r_0 = 1·1/1·0.6 + 1·3/5·0.4 = 0.84; r_1 = 0 + 2·1/5·0.4 = 0.16; r_2 = 0 (f = 0).
TEST(ZPlusRule, FullyConnectedByHand) {
  const auto r = zplus_rule(layer(Op::Linear), t64({1, -1, 2, 3, 1, -2}, {2, 3}),
                            t64({1, 2, 0}, {1, 3, 1, 1}), t64({0.6, 0.4}, {1, 2, 1, 1}));
  expect_near(r, t64({0.84, 0.16, 0}, {1, 3, 1, 1}));
}

// A 2x2 kernel w = [[1, -1], [2, 1]] (w+ = [[1, 0], [2, 1]]) over f = [[1, 2, 0], [0, 1, 1]]:
// output 0 sees [[1, 2], [0, 1]]: z = 1·1 + 2·0 + 0·2 + 1·1 = 2;
// output 1 sees [[2, 0], [1, 1]]: z = 2·1 + 0·0 + 1·2 + 1·1 = 5. r_out = (0.5, 0.5).
// f(0,0): 1·1/2·0.5 = 0.25; f(1,1): 1·1/2·0.5 (from 0) + 1·2/5·0.5 (from 1) = 0.45;
// f(0,1): 2·0 (from 0) + 2·1/5·0.5 (from 1) = 0.2; f(1,2): 1·1/5·0.5 = 0.1; the rest 0.
TEST(ZPlusRule, ConvolutionByHand) {
  const auto r = zplus_rule(layer(Op::Conv, 2), t64({1, -1, 2, 1}, {1, 1, 2, 2}),
                            t64({1, 2, 0, 0, 1, 1}, {1, 1, 2, 3}), t64({0.5, 0.5}, {1, 1, 1, 2}));
  expect_near(r, t64({0.25, 0.2, 0, 0, 0.45, 0.1}, {1, 1, 2, 3}));
}

// Negative inputs (a site without ReLU) count through negative weights: f = (-1, 2), w = (-2, 1):
// max(0, -1·-2) = 2, max(0, 2·1) = 2, so r = (0.5, 0.5). An output whose z+ is zero (f = (0, 1),
// w = (1, -1)) passes nothing on.
TEST(ZPlusRule, NegativeInputsAndZeroDenominators) {
  expect_near(zplus_rule(layer(Op::Linear), t64({-2, 1}, {1, 2}), t64({-1, 2}, {1, 2, 1, 1}),
                         t64({1}, {1, 1, 1, 1})),
              t64({0.5, 0.5}, {1, 2, 1, 1}));
  expect_near(zplus_rule(layer(Op::Linear), t64({1, -1}, {1, 2}), t64({0, 1}, {1, 2, 1, 1}),
                         t64({1}, {1, 1, 1, 1})),
              t64({0, 0}, {1, 2, 1, 1}));
}

// z^B with bounds [-1, 1], f = (0.5, -1), w = (1, -1), r_out = 1:
// z_0 = 0.5·1 − (−1)·1 − 1·0 = 1.5; z_1 = (−1)(−1) − (−1)·0 − 1·(−1) = 2; r = (1.5, 2) / 3.5.
TEST(ZBRule, BoundedInputByHand) {
  const auto r = zb_rule(layer(Op::Linear), t64({1, -1}, {1, 2}), t64({0.5, -1}, {1, 2, 1, 1}),
                         t64({-1, -1}, {2}), t64({1, 1}, {2}), t64({1}, {1, 1, 1, 1}));
  expect_near(r, t64({1.5 / 3.5, 2 / 3.5}, {1, 2, 1, 1}));
}

// Max pooling 2x2 over [[1, 3, 2, 2], [0, 1, 5, 2]]: the winners are 3 and 5. On a tie the first
// in row-major order wins.
TEST(PoolRelevance, MaxPoolingGoesToTheWinner) {
  const auto r = pool_relevance(PoolSpec::max(2, 2), t64({1, 3, 2, 2, 0, 1, 5, 2}, {1, 1, 2, 4}),
                                t64({0.7, 0.3}, {1, 1, 1, 2}));
  expect_near(r, t64({0, 0.7, 0, 0, 0, 0, 0.3, 0}, {1, 1, 2, 4}));
  const auto tie = pool_relevance(PoolSpec::max(2, 2), t64({4, 4, 1, 4}, {1, 1, 2, 2}),
                                  t64({1}, {1, 1, 1, 1}));
  expect_near(tie, t64({1, 0, 0, 0}, {1, 1, 2, 2}));
}

// Average 2x2 over [[1, 3, 2, 2], [0, 0, 0, 4]], r_out = (1, 0.5): window sums 4 and 8, so
// (1/4, 3/4, 0, 0)·1 and (2/8, 2/8, 0, 4/8)·0.5. Global average of [[1, 3], [0, 4]]: f / 8.
TEST(PoolRelevance, AveragePoolingIsLinearWithPositiveWeights) {
  PoolSpec avg{PoolKind::Avg, 2, 2, 0, false};
  expect_near(pool_relevance(avg, t64({1, 3, 2, 2, 0, 0, 0, 4}, {1, 1, 2, 4}),
                             t64({1, 0.5}, {1, 1, 1, 2})),
              t64({0.25, 0.75, 0.125, 0.125, 0, 0, 0, 0.25}, {1, 1, 2, 4}));
  expect_near(pool_relevance(PoolSpec::global_avg(), t64({1, 3, 0, 4}, {1, 1, 2, 2}),
                             t64({1}, {1, 1, 1, 1})),
              t64({0.125, 0.375, 0, 0.5}, {1, 1, 2, 2}));
}

// ---------------------------------------------------------------------------------------------
// Eq. 2 through a network, and eq. 3.
// ---------------------------------------------------------------------------------------------

// chain() on input codes (1, 1), label 0: site 0 = relu(3, 2) = (3, 2), scores (5, 4).
// scores -> site 0 (class 0, w+ = (1, 1)): z = 5, r = (3/5, 2/5).
// site 0 -> input (w+ = [[1, 2], [3, 0]]): z = (3, 3);
// r_a = 1·1/3·0.6 + 1·3/3·0.4 = 0.6, r_b = 1·2/3·0.6 + 0 = 0.4.
TEST(Relevance, ChainByHand) {
  const auto q = integer_quantized(chain());
  const auto r = relevance(q, t64({1, 1}, {1, 2, 1, 1}).to(torch::kFloat32),
                           torch::tensor({0}, torch::kInt64), InputRule::Auto);
  expect_near(r.blocks[1], t64({1, 0}, {1, 2, 1, 1}));
  expect_near(r.blocks[0], t64({0.6, 0.4}, {1, 2, 1, 1}));
  expect_near(r.input, t64({0.6, 0.4}, {1, 2, 1, 1}));
}

// Eq. 3 over two images: (1, 1) label 0 as above, and (1, 0) label 1: site 0 = relu(1, 3),
// scores (4, -1); class 1 (w+ = (2, 0)) gives site 0 r = (1, 0), and the input (w+ row 0 =
// (1, 2), z = 1) r = (1, 0). Means: site 0 and input (0.8, 0.2), scores (0.5, 0.5).
TEST(MeanRelevance, AveragesOverTheImagesByHand) {
  const auto q = integer_quantized(chain());
  const auto images = torch::tensor({255, 255, 255, 0}, torch::kUInt8).view({2, 2, 1, 1});
  const auto labels = torch::tensor({0, 1}, torch::kInt64);
  for (int64_t batch : {1, 2}) {
    RelevanceOptions o;
    o.batch = batch;
    const MeanRelevance m = mean_relevance(q, images, labels, o);
    EXPECT_EQ(m.images, 2);
    expect_near(m.blocks[0], t64({0.8, 0.2}, {2, 1, 1}));
    expect_near(m.blocks[1], t64({0.5, 0.5}, {2, 1, 1}));
    expect_near(m.input, t64({0.8, 0.2}, {2, 1, 1}));
  }
}

// Moving a global average pooling behind the 1x1 convolution that reads it (section V-E1) leaves
// the relevance of the site before them unchanged. Site 0 = (x, 2x) over a 2x2 image
// x = [[1, 3], [2, 2]] (channel means 2 and 4, exact in integer codes); scores weights
// [[1, -1], [2, 1]], label 0, w+ row 0 = (1, 0). With the pooling first: z = 2, so r(gap) =
// (1, 0) and site 0 channel 0 gets x / 8, channel 1 nothing. With the pooling behind: the
// per-position scores x − 2x are negative, but the 1x1 convolution and the pooling form one
// linear layer and its z+ contributions x·1 give the same x / 8.
TEST(Relevance, GlobalAveragePoolingCommutesWithTheOneByOneConvolution) {
  Network first = base({1, 2, 2}), behind = base({1, 2, 2});
  for (Network* n : {&first, &behind})
    n->blocks.push_back(conv1x1("conv", {Block::kNetworkInput}, {{1}, {2}}, true));
  Block gap;
  gap.name = "gap";
  gap.op = Op::Pool;
  gap.inputs = {0};
  gap.pool = PoolSpec::global_avg();
  first.blocks.push_back(gap);
  first.blocks.push_back(conv1x1("scores", {1}, {{1, -1}, {2, 1}}, false));
  Block scores = conv1x1("scores", {0}, {{1, -1}, {2, 1}}, false);
  scores.post = PoolSpec::global_avg();
  behind.blocks.push_back(scores);
  const auto x = t64({1, 3, 2, 2}, {1, 1, 2, 2}).to(torch::kFloat32);
  const auto label = torch::tensor({0}, torch::kInt64);
  const auto want = t64({0.125, 0.375, 0.25, 0.25, 0, 0, 0, 0}, {1, 2, 2, 2});
  expect_near(relevance(integer_quantized(first), x, label, InputRule::ZPlus).blocks[0], want);
  expect_near(relevance(integer_quantized(behind), x, label, InputRule::ZPlus).blocks[0], want);
}

namespace {

Block random_weighted(const std::string& name, Op op, int input, int64_t in, int64_t out,
                      int kernel, torch::Generator& gen) {
  Block b;
  b.name = name;
  b.op = op;
  b.inputs = {input};
  b.out_channels = out;
  b.kernel = kernel;
  b.weight = op == Op::Conv ? torch::empty({out, in, kernel, kernel}) : torch::empty({out, in});
  b.weight.uniform_(-1.0, 1.0, gen);
  // No bias: an output that a ReLU lets through then has positive z+, and z+ conserves relevance.
  b.bias = torch::zeros({out});
  b.relu = true;
  return b;
}

Block global_pooling(int input) {
  Block b;
  b.name = "gap";
  b.op = Op::Pool;
  b.inputs = {input};
  b.pool = PoolSpec::global_avg();
  return b;
}

/// Every kind of block (the network of test_quant.cpp, with ReLUs and without biases):
///   0 conv0   3x3 pad 1, ReLU, max pool 2x2           4x8x8
///   1 conv1   3x3 stride 2 dilation 2 pad 2, ReLU      6x4x4   (read by 2 and 3)
///   2 conv2a  1x1, ReLU, average pool 3x3 s1 pad 1     3x4x4
///   3 conv2b  3x3 pad 1, ReLU                          2x4x4
///   4 cat     concatenation of 2 and 3                 5x4x4
///   5 gap     global average pooling                   5x1x1
///   6 fc      fully-connected, ReLU                    4x1x1
///   7 scores  fully-connected, positive weights        3x1x1
Network every_block(uint64_t seed, double input_mean) {
  auto gen = at::detail::createCPUGenerator(seed);
  Network net = base({2, 16, 16});
  net.input_mean = {input_mean, input_mean};
  Block b0 = random_weighted("conv0", Op::Conv, Block::kNetworkInput, 2, 4, 3, gen);
  b0.padding = 1;
  b0.post = PoolSpec::max(2, 2);
  Block b1 = random_weighted("conv1", Op::Conv, 0, 4, 6, 3, gen);
  b1.stride = 2;
  b1.dilation = 2;
  b1.padding = 2;
  Block b2 = random_weighted("conv2a", Op::Conv, 1, 6, 3, 1, gen);
  b2.post = {PoolKind::Avg, 3, 1, 1, false};
  Block b3 = random_weighted("conv2b", Op::Conv, 1, 6, 2, 3, gen);
  b3.padding = 1;
  Block b4;
  b4.name = "cat";
  b4.op = Op::Concat;
  b4.inputs = {2, 3};
  Block b5 = global_pooling(4);
  Block b6 = random_weighted("fc", Op::Linear, 5, 5, 4, 1, gen);
  Block b7 = random_weighted("scores", Op::Linear, 6, 4, 3, 1, gen);
  b7.weight = b7.weight.abs();
  b7.relu = false;
  net.blocks = {b0, b1, b2, b3, b4, b5, b6, b7};
  net.validate();
  return net;
}

QuantizedNetwork fine_quantized(const Network& net) {
  QuantFormats q;
  q.input = {8, 5, true};
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    q.act.push_back({8, 4, true});
    q.weight.push_back({8, 6, true});
  }
  return QuantizedNetwork(net, q);
}

}  // namespace

// The z+ rule conserves relevance where every output that holds relevance has a positive
// denominator: with ReLUs and no biases, a neuron with a positive code has positive z+, max
// pooling hands everything to a winner, and the concatenation splits without loss. So every cut
// of the graph (a site, or both branches together) holds exactly the relevance of one image.
// z^B (an input that can be negative) conserves it down to the input too.
TEST(Relevance, ConservedWhereTheZPlusRuleConservesIt) {
  for (double input_mean : {0.0, 0.5}) {
    for (uint64_t seed : {1, 2, 3}) {
      const auto q = fine_quantized(every_block(seed, input_mean));
      auto gen = at::detail::createCPUGenerator(seed + 100);
      const auto images = torch::randint(0, 256, {6, 2, 16, 16}, gen, torch::kUInt8);
      const auto labels = torch::randint(0, 3, {6}, gen, torch::kInt64);
      const auto x = q.quantize_input(images);
      ASSERT_EQ(x.min().item<double>() < 0, input_mean > 0);
      const auto rule = resolve_input_rule(q, InputRule::Auto);
      EXPECT_EQ(rule, input_mean > 0 ? InputRule::ZB : InputRule::ZPlus);
      const Relevance r = relevance(q, x, labels, InputRule::Auto);
      auto total = [](const torch::Tensor& t) { return t.flatten(1).sum(1); };
      const auto one = torch::ones({6}, torch::kFloat64);
      const std::string where =
          "seed " + std::to_string(seed) + " mean " + std::to_string(input_mean);
      for (int b : {0, 1, 4, 5, 6, 7}) {
        SCOPED_TRACE(where + " block " + std::to_string(b));
        expect_near(total(r.blocks[b]), one, 1e-9);
      }
      expect_near(total(r.blocks[2]) + total(r.blocks[3]), one, 1e-9);
      expect_near(total(r.input), one, 1e-9);
      EXPECT_GE(r.input.min().item<double>(), 0.0);
    }
  }
}

TEST(Relevance, BadLabelsAreRejected) {
  const auto q = integer_quantized(chain());
  const auto x = t64({1, 1}, {1, 2, 1, 1}).to(torch::kFloat32);
  EXPECT_THROW(relevance(q, x, torch::tensor({2}, torch::kInt64), InputRule::Auto), Error);
  EXPECT_THROW(relevance(q, x, torch::tensor({0, 1}, torch::kInt64), InputRule::Auto), Error);
  EXPECT_THROW(parse_input_rule("w2"), Error);
  try {
    parse_input_rule("w2");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("auto, zplus, zb"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Eq. 4 and 5.
// ---------------------------------------------------------------------------------------------

// Channel 0 [[1, 2], [3, 4]] sums to 10, channel 1 [[0, 0.5], [0, 0.5]] to 1.
TEST(FeatureRelevance, SumsOverTheSpatialDimensions) {
  expect_near(feature_relevance(t64({1, 2, 3, 4, 0, 0.5, 0, 0.5}, {2, 2, 2})), t64({10, 1}, {2}));
  EXPECT_THROW(feature_relevance(t64({1, 2}, {2})), Error);
}

// K = 2, C = 2, 1x1: w = [[1, -2], [3, 0.5]], ρ = (0.5, 0.25):
// η_0 = (1·0.5 + 3·0.25) / 2 = 0.625, η_1 = (2·0.5 + 0.5·0.25) / 2 = 0.5625.
// K = 1, C = 1, 2x2: w = [[1, -1], [2, 0]], ρ = 2: η = (1 + 1 + 2 + 0) / 4 · 2 = 2.
TEST(FeatureCriticality, ByHand) {
  expect_near(feature_criticality(t64({1, -2, 3, 0.5}, {2, 2, 1, 1}), t64({0.5, 0.25}, {2})),
              t64({0.625, 0.5625}, {2}));
  expect_near(feature_criticality(t64({1, -1, 2, 0}, {1, 1, 2, 2}), t64({2}, {1})), t64({2}, {1}));
  EXPECT_THROW(feature_criticality(t64({1, 2}, {1, 2, 1, 1}), t64({1, 1}, {2})), Error);
}

// chain() with the mean relevance of MeanRelevance.AveragesOverTheImagesByHand: ρ(site 0) =
// (0.8, 0.2); the scores' ρ is the label frequency (0.5, 0.5), their weights [[1, 1], [2, -1]]:
// η_0 = (1·0.5 + 2·0.5) / 2 = 0.75, η_1 = (1·0.5 + 1·0.5) / 2 = 0.5.
TEST(SiteCriticality, ChainByHand) {
  const auto q = integer_quantized(chain());
  const auto images = torch::tensor({255, 255, 255, 0}, torch::kUInt8).view({2, 2, 1, 1});
  const auto m = mean_relevance(q, images, torch::tensor({0, 1}, torch::kInt64));
  const auto s = site_criticality(q, m);
  ASSERT_EQ(s.size(), 1u);
  expect_near(s[0].rho, t64({0.8, 0.2}, {2}));
  expect_near(s[0].eta, t64({0.75, 0.5}, {2}));
  EXPECT_EQ(s[0].readers, std::vector<int>{1});
  EXPECT_EQ(s[0].weighted, std::vector<int>{1});
}

// Site 0 is read by a convolution "neg" (weights -I) and by the concatenation (site 0, site 1),
// which the scores read with weights [[2, 0, 2, 0], [0, 6, 0, 0]]. Given ρ(neg) = (0.1, 0.3) and
// ρ(scores) = (0.5, 0.5):
//   η(cat) = (2·0.5, 6·0.5, 2·0.5, 0) / 2 = (0.5, 1.5, 0.5, 0);
//   η(neg) = η(cat)[2:4] = (0.5, 0): the concatenation passes its features on;
//   η(site 0) = neg's eq. 5 term (0.1/2, 0.3/2) + η(cat)[0:2] = (0.55, 1.65).
TEST(SiteCriticality, SitesReadBySeveralBlocksSumTheirTerms) {
  Network net = base({2, 1, 1});
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, true));
  net.blocks.push_back(conv1x1("neg", {0}, {{-1, 0}, {0, -1}}, true));
  Block cat;
  cat.name = "cat";
  cat.op = Op::Concat;
  cat.inputs = {0, 1};
  net.blocks.push_back(cat);
  net.blocks.push_back(conv1x1("scores", {2}, {{2, 0, 2, 0}, {0, 6, 0, 0}}, false));
  net.validate();
  const auto q = integer_quantized(net);
  MeanRelevance m;
  m.blocks = {t64({0.4, 0.6}, {2, 1, 1}), t64({0.1, 0.3}, {2, 1, 1}),
              t64({0.1, 0.2, 0.3, 0.4}, {4, 1, 1}), t64({0.5, 0.5}, {2, 1, 1})};
  const auto s = site_criticality(q, m);
  ASSERT_EQ(s.size(), 3u);
  expect_near(s[2].eta, t64({0.5, 1.5, 0.5, 0}, {4}));
  expect_near(s[1].eta, t64({0.5, 0}, {2}));
  expect_near(s[0].eta, t64({0.55, 1.65}, {2}));
  EXPECT_EQ(s[0].readers, (std::vector<int>{1, 2}));
  EXPECT_EQ(s[0].weighted, (std::vector<int>{1, 3}));
  expect_near(s[0].rho, t64({0.4, 0.6}, {2}));
}

// η = (1, 2, 3): η/mean = (0.5, 1, 1.5), population SD sqrt((0.25 + 0 + 0.25) / 3).
TEST(NormalizedSd, ByHand) {
  EXPECT_NEAR(normalized_sd(t64({1, 2, 3}, {3})), std::sqrt(0.5 / 3), kTol);
  EXPECT_EQ(normalized_sd(t64({4, 4}, {2})), 0.0);
  EXPECT_TRUE(std::isnan(normalized_sd(t64({0, 0}, {2}))));
}

// ---------------------------------------------------------------------------------------------
// Validation statistics.
// ---------------------------------------------------------------------------------------------

TEST(Validation, AverageRanksShareTies) {
  EXPECT_EQ(average_ranks({10, 20, 20, 5}), (std::vector<double>{2, 3.5, 3.5, 1}));
  EXPECT_EQ(average_ranks({1, 1, 1}), (std::vector<double>{2, 2, 2}));
}

// (1, 2, 3, 4) against (1, 3, 2, 4): d = (0, 1, 1, 0), 1 − 6·2 / (4·15) = 0.8.
// Against (0, 0, 1, 1) (ranks 1.5, 1.5, 3.5, 3.5): 4 / sqrt(5·4) = 0.894427191.
TEST(Validation, SpearmanByHand) {
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {1, 3, 2, 4}), 0.8, kTol);
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {10, 30, 20, 40}), 0.8, kTol);
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {0, 0, 1, 1}), 4 / std::sqrt(20.0), kTol);
  EXPECT_NEAR(spearman({1, 2, 3}, {3, 2, 1}), -1.0, kTol);
  EXPECT_TRUE(std::isnan(spearman({1, 2, 3}, {0, 0, 0})));
  EXPECT_THROW(spearman({1, 2}, {1}), Error);
}

TEST(Validation, TopKAndOverlap) {
  EXPECT_EQ(top_k({0.1, 0.5, 0.5, 0.2}, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(top_k({0.1, 0.5}, 5), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(top_k_overlap({4, 3, 2, 1}, {1, 3, 2, 4}, 2), 1);  // {0, 1} against {3, 1}
  EXPECT_EQ(top_k_overlap({4, 3, 2, 1}, {4, 3, 2, 1}, 3), 3);
  // b's top 2 is {3} and one of the tied {0, 1, 2}: a's top 2, {0, 1}, are each in it with
  // chance 1/3.
  EXPECT_NEAR(top_k_overlap({4, 3, 2, 1}, {1, 1, 1, 5}, 2), 2.0 / 3, kTol);
  EXPECT_NEAR(top_k_overlap({4, 3, 2, 1}, {1, 1, 1, 5}, 1), 0.0, kTol);
  // All of b equal: a random ranking's k²/C.
  EXPECT_NEAR(top_k_overlap({4, 3, 2, 1}, {0, 0, 0, 0}, 2), 1.0, kTol);
}

// Feature 0 holds rates (0, 0.2), feature 1 (0.1, 0.1).
TEST(Validation, FeatureRatesAndSiteComparison) {
  const auto rates = t64({0, 0.2, 0.1, 0.1}, {2, 1, 2});
  const FeatureRates f = feature_rates(rates);
  EXPECT_EQ(f.mean, (std::vector<double>{0.1, 0.1}));
  EXPECT_EQ(f.max, (std::vector<double>{0.2, 0.1}));
  const auto v = validate_site(t64({2, 1}, {2}), t64({1, 2}, {2}), rates, 5);
  EXPECT_TRUE(std::isnan(v.spearman_mean));  // the mean rates are tied
  EXPECT_NEAR(v.spearman_max, 1.0, kTol);
  EXPECT_TRUE(std::isnan(v.spearman_rho_mean)) << "ρ against tied rates is undefined too";
  EXPECT_EQ(v.k, 2);
  EXPECT_EQ(v.overlap_max, 2);
  // Spread over the features: the mean rates are equal (0), the largest 0.2 and 0.1 are 4/3 and
  // 2/3 of their mean, 1/3 from 1 either way.
  EXPECT_NEAR(v.sd_mean_rate, 0.0, kTol);
  EXPECT_NEAR(v.sd_max_rate, 1.0 / 3, kTol);
  // Mean rates 0.1, 0.3, 0.2: 1/2, 3/2, 1 of their mean; SD sqrt((1/4 + 1/4 + 0) / 3).
  const auto three = validate_site(t64({1, 2, 3}, {3}), t64({1, 2, 3}, {3}),
                                   t64({0.1, 0.1, 0.3, 0.3, 0.1, 0.3}, {3, 1, 2}), 2);
  EXPECT_NEAR(three.sd_mean_rate, std::sqrt(1.0 / 6), kTol);
  // Largest rates 0.1, 0.3, 0.3: 3/7, 9/7, 9/7 of their mean; SD sqrt((16 + 4 + 4) / 49 / 3).
  EXPECT_NEAR(three.sd_max_rate, 2 * std::sqrt(2.0) / 7, kTol);
  // No failure at all: no spread to speak of.
  const auto none = validate_site(t64({1, 2}, {2}), t64({1, 2}, {2}), t64({0, 0}, {2, 1, 1}), 1);
  EXPECT_TRUE(std::isnan(none.sd_mean_rate));
}

TEST(Validation, ReadsCampaignRatesFromNpyOrCsv) {
  TempDir d;
  const Shape shape{2, 1, 2};
  write_npy(d.str() + "/rates_site1.npy", {0, 0.25, 0.5, 1}, {2, 1, 2});
  expect_near(read_site_rates(d.str(), 1, shape), t64({0, 0.25, 0.5, 1}, {2, 1, 2}));
  CsvTable csv;
  csv.header = {"index", "c", "y", "x", "bit", "failure_rate"};
  csv.rows = {{"0", "0", "0", "0", "7", "0.5"}, {"3", "1", "0", "1", "7", "0.125"},
              {"1", "0", "0", "1", "7", "0"},   {"2", "1", "0", "0", "7", "1"}};
  write_csv(d.str() + "/rates_site2.csv", csv);
  expect_near(read_site_rates(d.str(), 2, shape), t64({0.5, 0, 1, 0.125}, {2, 1, 2}));
  // Another shape (a campaign of every bit), a missing site, a repeated neuron.
  write_npy(d.str() + "/rates_site3.npy", std::vector<double>(32, 0.0), {2, 1, 2, 8});
  try {
    read_site_rates(d.str(), 3, shape);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2x1x2x8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_site_rates(d.str(), 4, shape), Error);
  csv.rows[1] = {"3", "0", "0", "0", "6", "0.125"};
  write_csv(d.str() + "/rates_site5.csv", csv);
  EXPECT_THROW(read_site_rates(d.str(), 5, shape), Error);
  // Cells that are no numbers, or no whole numbers (1e300 as a channel was converted to an
  // integer, undefined behaviour; "x" read as 0), and a NaN rate (a CSV lists measured
  // neurons only): refused, naming the row.
  for (const std::string& bad : {"1e300", "x", "1.5"}) {
    csv.rows[1] = {"3", bad, "0", "1", "7", "0.125"};
    write_csv(d.str() + "/rates_site6.csv", csv);
    const std::string message = error_of([&] { read_site_rates(d.str(), 6, shape); });
    EXPECT_NE(message.find("row 3"), std::string::npos) << message;
  }
  csv.rows[1] = {"3", "1", "0", "1", "7", "nan"};
  write_csv(d.str() + "/rates_site6.csv", csv);
  EXPECT_THROW(read_site_rates(d.str(), 6, shape), Error);
  // In a .npy, NaN is a neuron a limited campaign did not measure; infinity is no rate.
  write_npy(d.str() + "/rates_site7.npy", {0, NAN, 0.5, 1}, {2, 1, 2});
  EXPECT_TRUE(std::isnan(read_site_rates(d.str(), 7, shape)[0][0][1].item<double>()));
  write_npy(d.str() + "/rates_site8.npy", {0, -INFINITY, 0.5, 1}, {2, 1, 2});
  const std::string message = error_of([&] { read_site_rates(d.str(), 8, shape); });
  EXPECT_NE(message.find("outside [0, 1]"), std::string::npos) << message;
}

// A campaign split by --sites: each site from the directory that holds it; a site in two
// directories, or a directory without rates, is an error.
TEST(Validation, ReadsACampaignSplitOverSeveralDirectories) {
  TempDir d;
  Network net = base({2, 1, 1});
  net.blocks.push_back(conv1x1("a", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, true));
  net.blocks.push_back(conv1x1("b", {0}, {{1, 0}, {0, 1}}, true));
  net.blocks.push_back(conv1x1("scores", {1}, {{1, 0}, {0, 1}}, false));
  net.validate();
  ASSERT_EQ(net.sites(), (std::vector<int>{0, 1}));
  const std::string a = d.str() + "/a", b = d.str() + "/b", empty = d.str() + "/empty";
  for (const auto& dir : {a, b, empty}) fs::create_directories(dir);
  write_npy(a + "/rates_site0.npy", {0.5, 0.25}, {2, 1, 1});
  write_npy(b + "/rates_site1.npy", {0.125, 1}, {2, 1, 1});
  const auto rates = read_campaign_rates(std::vector<std::string>{a, b}, net);
  ASSERT_EQ(rates.size(), 2u);
  expect_near(rates.at(0), t64({0.5, 0.25}, {2, 1, 1}));
  expect_near(rates.at(1), t64({0.125, 1}, {2, 1, 1}));
  try {
    read_campaign_rates(std::vector<std::string>{a, b, a}, net);
    ADD_FAILURE() << "no error for site 0 in two directories";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("site 0 is in both"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_campaign_rates(std::vector<std::string>{a, empty}, net), Error);
  EXPECT_THROW(read_campaign_rates(std::vector<std::string>{}, net), Error);
}

// Site of three features: η 1, 2, 3 (η/mean 0.5, 1, 1.5); rates 0.1, 0.2, 0.3 before, 0.3, 0.2,
// 0.1 after, as eq. 6's factors 2, 1, 2/3 would push them.
TEST(Validation, FeatureChangeByHand) {
  const FeatureRates before{{0.1, 0.2, 0.3}, {0.1, 0.2, 0.3}};
  const FeatureRates after{{0.3, 0.2, 0.1}, {0.3, 0.25, 0.1}};
  const FeatureChange c = feature_change({1, 2, 3}, before, after);
  const double sd = std::sqrt((0.25 + 0 + 0.25) / 3);
  EXPECT_NEAR(c.sd_eta, sd, kTol);
  EXPECT_NEAR(c.spearman_eta_max, 1.0, kTol);
  EXPECT_NEAR(c.sd_max_rate_before, sd, kTol);
  // Largest rates after 0.3, 0.25, 0.1, mean 0.65/3: SD of x/mean - 1 over the three.
  const double m = 0.65 / 3;
  const double sq = std::pow(0.3 / m - 1, 2) + std::pow(0.25 / m - 1, 2) + std::pow(0.1 / m - 1, 2);
  EXPECT_NEAR(c.sd_max_rate_after, std::sqrt(sq / 3), kTol);
  EXPECT_DOUBLE_EQ(c.worst_before, 0.3);
  EXPECT_DOUBLE_EQ(c.worst_after, 0.3);
  EXPECT_NEAR(c.mean_before, 0.2, kTol);
  EXPECT_NEAR(c.mean_after, 0.2, kTol);
  // after / before of the mean rates: 3, 1, 1/3 against η 1, 2, 3.
  EXPECT_NEAR(c.spearman_factor_change, -1.0, kTol);
  EXPECT_EQ(c.features, 3);
  EXPECT_EQ(c.compared, 3);
  EXPECT_EQ(c.features_worse, 2) << "features 0 and 1 have a larger largest rate after";
  // A feature that never failed before has no ratio: it is left out of the correlation.
  const FeatureChange z =
      feature_change({1, 2, 3, 4}, {{0.1, 0.2, 0.3, 0}, {0.1, 0.2, 0.3, 0}},
                     {{0.3, 0.2, 0.1, 0.5}, {0.3, 0.2, 0.1, 0.5}});
  EXPECT_EQ(z.compared, 3);
  EXPECT_NEAR(z.spearman_factor_change, -1.0, kTol);
  EXPECT_DOUBLE_EQ(z.worst_after, 0.5);
  // Unchanged rates: a constant ratio, no correlation to speak of.
  EXPECT_TRUE(std::isnan(feature_change({1, 2, 3}, before, before).spearman_factor_change));
  // Sites of different sizes.
  EXPECT_THROW(feature_change({1, 2}, before, after), Error);
  EXPECT_THROW(feature_change({1, 2, 3}, before, {{0.1, 0.2}, {0.1, 0.2}}), Error);
}

// ---------------------------------------------------------------------------------------------
// Residual additions, grouped convolutions and clamps (ReLU6, hardtanh).
// ---------------------------------------------------------------------------------------------

// C = 4 inputs in 2 groups, K = 2 outputs: output 0 reads f_0, f_1 with w = (1, 2), output 1
// reads f_2, f_3 with w = (1, 1). f = (1, 1, 2, 6): z_0 = 1 + 2 = 3, z_1 = 2 + 6 = 8; r_out =
// (0.6, 0.4) gives (1·0.6/3, 2·0.6/3, 2·0.4/8, 6·0.4/8) = (0.2, 0.4, 0.1, 0.3): each group's
// relevance stays in it, and the dense convolution with zeros outside the groups agrees.
TEST(ZPlusRule, GroupedConvolutionKeepsRelevanceInsideTheGroup) {
  Block grouped = layer(Op::Conv);
  grouped.groups = 2;
  const auto f = t64({1, 1, 2, 6}, {1, 4, 1, 1});
  const auto r_out = t64({0.6, 0.4}, {1, 2, 1, 1});
  const auto want = t64({0.2, 0.4, 0.1, 0.3}, {1, 4, 1, 1});
  expect_near(zplus_rule(grouped, t64({1, 2, 1, 1}, {2, 2, 1, 1}), f, r_out), want);
  expect_near(zplus_rule(layer(Op::Conv), t64({1, 2, 0, 0, 0, 0, 1, 1}, {2, 4, 1, 1}), f, r_out),
              want);
  // Depthwise 3x3 (groups = channels) on random inputs: the same as its dense form.
  auto gen = at::detail::createCPUGenerator(5);
  Block dw = layer(Op::Conv, 3, 1, 1);
  dw.groups = 3;
  const auto w = torch::randn({3, 1, 3, 3}, gen, torch::kFloat64);
  auto dense = torch::zeros({3, 3, 3, 3}, torch::kFloat64);
  for (int64_t c = 0; c < 3; ++c) dense[c][c] = w[c][0];
  const auto x = torch::rand({2, 3, 5, 5}, gen, torch::kFloat64);
  const auto r = torch::rand({2, 3, 5, 5}, gen, torch::kFloat64);
  expect_near(zplus_rule(dw, w, x, r), zplus_rule(layer(Op::Conv, 3, 1, 1), dense, x, r), 1e-12);
}

// x1 = (1, -2, 0, 3), x2 = (3, 4, 0, -1), r_out = (1, 0.5, 0.8, 0.2): element 0 splits 1 : 3,
// element 1 goes to x2 alone (x1's contribution is negative), element 2 has no positive
// contribution and passes nothing on, element 3 goes to x1.
TEST(AdditionRelevance, SplitsByThePositiveContributionsByHand) {
  const auto r = addition_relevance({t64({1, -2, 0, 3}, {1, 1, 2, 2}), t64({3, 4, 0, -1}, {1, 1, 2, 2})},
                                    t64({1, 0.5, 0.8, 0.2}, {1, 1, 2, 2}));
  ASSERT_EQ(r.size(), 2u);
  expect_near(r[0], t64({0.25, 0, 0, 0.2}, {1, 1, 2, 2}));
  expect_near(r[1], t64({0.75, 0.5, 0, 0}, {1, 1, 2, 2}));
  // Three inputs: 1 : 1 : 2.
  const auto three = addition_relevance({t64({1}, {1, 1, 1, 1}), t64({1}, {1, 1, 1, 1}),
                                         t64({2}, {1, 1, 1, 1})},
                                        t64({1}, {1, 1, 1, 1}));
  expect_near(three[2], t64({0.5}, {1, 1, 1, 1}));
  EXPECT_THROW(addition_relevance({t64({1}, {1, 1, 1, 1}), t64({1, 2}, {1, 2, 1, 1})},
                                  t64({1}, {1, 1, 1, 1})),
               Error);
}

// input (a, b) -> site 0 = relu(a, b) in s8.1 -> site 1 = branch [[1, 1], [0, 2]] in s8.0 ->
// site 2 = relu(site 1 + site 0) in s8.1 -> scores [[1, 1], [1, -1]]. Codes (2, 1), label 0:
// site 0 = (2, 1), codes (4, 2); site 1 = (3, 2), codes (3, 2); the addition aligns site 1 to
// its finer format, (6, 4), and adds (4, 2): site 2 codes (10, 6).
// scores -> site 2: z = 16, r = (10/16, 6/16) = (0.625, 0.375).
// site 2 -> its inputs, aligned: (6 : 4) · 0.625 and (4 : 2) · 0.375, so site 1 gets
// (0.375, 0.25) and site 0 through the shortcut (0.25, 0.125).
// site 1 -> site 0 (w+ = [[1, 1], [0, 2]], f = (4, 2)): z = (6, 4); r_0 = 4/6 · 0.375 = 0.25,
// r_1 = 2/6 · 0.375 + 4/4 · 0.25 = 0.375. Site 0 sums both: (0.5, 0.5), and so does the input.
TEST(Relevance, ResidualAdditionAlignsItsInputsByHand) {
  Network net = base({2, 1, 1});
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, true));
  net.blocks.push_back(conv1x1("branch", {0}, {{1, 1}, {0, 2}}, false));
  net.blocks.push_back(graph_add("add", {1, 0}, true));
  net.blocks.push_back(conv1x1("scores", {2}, {{1, 1}, {1, -1}}, false));
  net.validate();
  QuantFormats f;
  f.input = {8, 0, true};
  for (int frac : {1, 0, 1, 0}) {
    f.act.push_back({8, frac, true});
    f.weight.push_back({8, 0, true});
  }
  const QuantizedNetwork q(net, f);
  const auto x = t64({2, 1}, {1, 2, 1, 1}).to(torch::kFloat32);
  ASSERT_TRUE(q.forward_all(x)[2].equal(t64({10, 6}, {1, 2, 1, 1}).to(torch::kFloat32)));
  const auto r = relevance(q, x, torch::tensor({0}, torch::kInt64), InputRule::ZPlus);
  expect_near(r.blocks[2], t64({0.625, 0.375}, {1, 2, 1, 1}));
  expect_near(r.blocks[1], t64({0.375, 0.25}, {1, 2, 1, 1}));
  expect_near(r.blocks[0], t64({0.5, 0.5}, {1, 2, 1, 1}));
  expect_near(r.input, t64({0.5, 0.5}, {1, 2, 1, 1}));
}

// chain()'s first layer as ReLU6: codes (3, 2) give (3 + 4, 9 - 2) = (7, 7), clamped to (6, 6).
// scores -> site 0: z = 12, r = (0.5, 0.5). The saturated neurons pass their relevance on as a
// ReLU's active neurons do, by their inputs' z+ contributions (w+ = [[1, 2], [3, 0]]):
// z = (3 + 4, 9), r_a = 3/7 · 0.5 + 9/9 · 0.5 = 5/7, r_b = 4/7 · 0.5 = 2/7; nothing is lost.
TEST(Relevance, ASaturatedNeuronPassesRelevanceAsAnActiveReLU) {
  Network net = chain();
  net.blocks[0].clamp_max = 6;
  const auto q = integer_quantized(net);
  const auto x = t64({3, 2}, {1, 2, 1, 1}).to(torch::kFloat32);
  ASSERT_TRUE(q.forward_all(x)[0].equal(t64({6, 6}, {1, 2, 1, 1}).to(torch::kFloat32)));
  const auto r = relevance(q, x, torch::tensor({0}, torch::kInt64), InputRule::ZPlus);
  expect_near(r.blocks[0], t64({0.5, 0.5}, {1, 2, 1, 1}));
  expect_near(r.input, t64({5.0 / 7, 2.0 / 7}, {1, 2, 1, 1}));
}

namespace {

/// Additions, grouped convolutions and clamps, with ReLUs and without biases:
///   0 conv0   3x3 pad 1, ReLU clamped at 1 (saturates)    4x12x12   (read by 1 and 3)
///   1 dw      depthwise 3x3 pad 1, ReLU6-like clamp at 2  4x12x12
///   2 pw      1x1, ReLU                                   4x12x12
///   3 add     2 + 0 (identity shortcut), ReLU             4x12x12   (read by 4 and 5)
///   4 gconv   3x3 stride 2 pad 1, 2 groups, ReLU          6x6x6
///   5 short   1x1 stride 2 (projection shortcut), ReLU    6x6x6
///   6 add2    4 + 5, ReLU, max pool 2x2                   6x3x3
///   7 gap     global average pooling                      6x1x1
///   8 scores  fully-connected, positive weights           3x1x1
/// Sites in formats of different fractional lengths, so that the additions align their inputs.
Network residual_blocks(uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Network net = base({2, 12, 12});
  auto conv = [&](const std::string& name, int input, int64_t in, int64_t out, int kernel,
                  int stride, int groups) {
    Block b = random_weighted(name, Op::Conv, input, in / groups, out, kernel, gen);
    b.stride = stride;
    b.padding = kernel / 2;
    b.groups = groups;
    return b;
  };
  Block b0 = conv("conv0", Block::kNetworkInput, 2, 4, 3, 1, 1);
  b0.clamp_max = 1;
  Block b1 = conv("dw", 0, 4, 4, 3, 1, 4);
  b1.clamp_max = 2;
  Block b2 = conv("pw", 1, 4, 4, 1, 1, 1);
  Block b3 = graph_add("add", {2, 0}, true);
  Block b4 = conv("gconv", 3, 4, 6, 3, 2, 2);
  Block b5 = conv("short", 3, 4, 6, 1, 2, 1);
  Block b6 = graph_add("add2", {4, 5}, true);
  b6.post = PoolSpec::max(2, 2);
  Block b7 = global_pooling(6);
  Block b8 = random_weighted("scores", Op::Linear, 7, 6, 3, 1, gen);
  b8.weight = b8.weight.abs();
  b8.relu = false;
  net.blocks = {b0, b1, b2, b3, b4, b5, b6, b7, b8};
  net.validate();
  return net;
}

}  // namespace

// As Relevance.ConservedWhereTheZPlusRuleConservesIt, through additions (aligned from formats of
// different fractional lengths), depthwise and grouped convolutions and saturating clamps: every
// cut of the graph holds exactly the relevance of one image.
TEST(Relevance, ConservedThroughAdditionsGroupedConvolutionsAndClamps) {
  for (uint64_t seed : {1, 2, 3}) {
    const Network net = residual_blocks(seed);
    QuantFormats f;
    f.input = {8, 5, true};
    for (int frac : {5, 4, 3, 4, 4, 3, 4, 4, 4}) {
      f.act.push_back({8, frac, true});
      f.weight.push_back({8, 6, true});
    }
    const QuantizedNetwork q(net, f);
    auto gen = at::detail::createCPUGenerator(seed + 100);
    const auto images = torch::randint(0, 256, {6, 2, 12, 12}, gen, torch::kUInt8);
    const auto labels = torch::randint(0, 3, {6}, gen, torch::kInt64);
    const auto x = q.quantize_input(images);
    const auto out = q.forward_all(x);
    // The clamp at 1 (code 32 in s8.5) saturates somewhere, or the test would not test it.
    EXPECT_GT((out[0] == 32).sum().item<int64_t>(), 0);
    const Relevance r = relevance(q, x, labels, InputRule::ZPlus);
    auto total = [](const torch::Tensor& t) { return t.flatten(1).sum(1); };
    const auto one = torch::ones({6}, torch::kFloat64);
    for (int b : {0, 3, 6, 7, 8}) {
      SCOPED_TRACE("seed " + std::to_string(seed) + " block " + std::to_string(b));
      expect_near(total(r.blocks[b]), one, 1e-9);
    }
    expect_near(total(r.blocks[4]) + total(r.blocks[5]), one, 1e-9);
    expect_near(total(r.input), one, 1e-9);
    // The identity shortcut carries part of it past the branch.
    EXPECT_GT((total(r.blocks[3]) - total(r.blocks[2])).min().item<double>(), 0.0);
  }
}

// K = 4 outputs in 2 groups of C = 2 features, 1x1: w = (1, −2, 3, 4), ρ = (0.5, 0.25, 1, 0.5).
// Feature 0 reaches outputs 0, 1, feature 1 outputs 2, 3; divided by K·U·V = 4 as for the dense
// convolution with zeros outside the groups: η_0 = (1·0.5 + 2·0.25) / 4 = 0.25,
// η_1 = (3·1 + 4·0.5) / 4 = 1.25.
TEST(FeatureCriticality, GroupedConvolutionUsesItsGroupsWeightsByHand) {
  const auto rho = t64({0.5, 0.25, 1, 0.5}, {4});
  expect_near(feature_criticality(t64({1, -2, 3, 4}, {4, 1, 1, 1}), rho, 2), t64({0.25, 1.25}, {2}));
  expect_near(feature_criticality(t64({1, 0, -2, 0, 0, 3, 0, 4}, {4, 2, 1, 1}), rho),
              t64({0.25, 1.25}, {2}));
  // 3 groups of a 3x3 convolution, 6 features to 9 outputs: as its dense form.
  auto gen = at::detail::createCPUGenerator(9);
  const auto w = torch::randn({9, 2, 3, 3}, gen, torch::kFloat64);
  auto dense = torch::zeros({9, 6, 3, 3}, torch::kFloat64);
  for (int64_t k = 0; k < 9; ++k) dense[k].slice(0, (k / 3) * 2, (k / 3) * 2 + 2).copy_(w[k]);
  const auto r9 = torch::rand({9}, gen, torch::kFloat64);
  expect_near(feature_criticality(w, r9, 3), feature_criticality(dense, r9), 1e-12);
  EXPECT_THROW(feature_criticality(w, r9, 2), Error);  // 2 groups do not divide 9 outputs
}

// Site 0 is read by a convolution "branch" (|w| = [[1, 1], [2, 0]]) and by the addition
// (site 1 + site 0), which the scores read with weights [[2, 0], [0, 6]]. With ρ(branch) =
// (0.1, 0.3) and ρ(scores) = (0.5, 0.5):
//   η(add) = (2·0.5, 6·0.5) / 2 = (0.5, 1.5);
//   η(branch) = η(add): the addition passes its input's feature c on as its feature c;
//   η(site 0) = the branch's eq. 5 term ((0.1 + 2·0.3) / 2, 0.1 / 2) + η(add) = (0.85, 1.55).
TEST(SiteCriticality, AnAdditionPassesEachFeatureToItsReaders) {
  Network net = base({2, 1, 1});
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, true));
  net.blocks.push_back(conv1x1("branch", {0}, {{1, -1}, {2, 0}}, true));
  net.blocks.push_back(graph_add("add", {1, 0}, true));
  net.blocks.push_back(conv1x1("scores", {2}, {{2, 0}, {0, 6}}, false));
  net.validate();
  const auto q = integer_quantized(net);
  MeanRelevance m;
  m.blocks = {t64({0.4, 0.6}, {2, 1, 1}), t64({0.1, 0.3}, {2, 1, 1}), t64({0.3, 0.7}, {2, 1, 1}),
              t64({0.5, 0.5}, {2, 1, 1})};
  const auto s = site_criticality(q, m);
  ASSERT_EQ(s.size(), 3u);
  expect_near(s[2].eta, t64({0.5, 1.5}, {2}));
  expect_near(s[1].eta, t64({0.5, 1.5}, {2}));
  expect_near(s[0].eta, t64({0.85, 1.55}, {2}));
  EXPECT_EQ(s[0].readers, (std::vector<int>{1, 2}));
  EXPECT_EQ(s[0].weighted, (std::vector<int>{1, 3}));
  EXPECT_EQ(s[1].weighted, std::vector<int>{3});
}

// On the trained depthwise network: every site has η; the expansion read by the depthwise
// convolution has η_c = Σ_uv |w_c,u,v| · ρ_c / (K·3·3), its own channel's weights and relevance
// alone; the stem, read by the expansion and the addition, sums both.
TEST(SiteCriticality, DepthwiseNetworkByItsGroups) {
  TrainedGraph t(depthwise_graph(), 60);
  const Dataset d = load_dataset(parse_data_spec("mnist"), Split::Train).head(40);
  const MeanRelevance m = mean_relevance(*t.q, d.images, d.labels);
  const auto s = site_criticality(*t.q, m);
  for (const auto& site : s) EXPECT_TRUE(site.eta.defined()) << site.block;
  const auto w = t.q->weight_codes(2).to(torch::kFloat64).abs() * t.q->formats().weight[2].step();
  const auto rho = feature_relevance(m.blocks[2]);
  expect_near(s[1].eta, w.sum({1, 2, 3}) * rho / (16 * 9.0), 1e-12);
  EXPECT_EQ(s[0].readers, (std::vector<int>{1, 4}));
  expect_near(s[0].eta,
              feature_criticality(t.q->weight_codes(1).to(torch::kFloat64) *
                                      t.q->formats().weight[1].step(),
                                  feature_relevance(m.blocks[1])) +
                  s[4].eta,
              1e-12);
  // The addition without ReLU holds negative values: relevance still reaches the input.
  EXPECT_GT(m.input.sum().item<double>(), 0.0);
}
