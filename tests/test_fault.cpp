// Faults, the golden run, the reference engine and campaigns. The expected failure rates of the
// tiny networks below are worked out by hand in the comments.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>
#include <unistd.h>

using namespace flipguard;
namespace fs = std::filesystem;

namespace {

Block conv1x1(const std::string& name, std::vector<int> inputs, std::vector<std::vector<float>> w,
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
QuantFormats integer_formats(const Network& net, bool is_signed) {
  QuantFormats q;
  q.input = {8, 0, true};
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    q.act.push_back({8, 0, is_signed});
    q.weight.push_back({8, 0, true});
  }
  return q;
}

Network tiny_base() {
  Network net;
  net.arch = "tiny";
  net.input = {2, 1, 1};
  net.input_mean = {0, 0};
  net.input_std = {1, 1};
  return net;
}

/// Site 0 = relu(identity(x)) = (a, b); scores = (a + 1, 3 b).
Network tiny_chain() {
  Network net = tiny_base();
  net.blocks.push_back(conv1x1("id", {Block::kNetworkInput}, {{1, 0}, {0, 1}}, {0, 0}, true));
  net.blocks.push_back(conv1x1("scores", {0}, {{1, 0}, {0, 3}}, {1, 0}, false));
  net.validate();
  return net;
}

/// Site 0 = (a, b) is read by two blocks: site 1 = relu(-(a, b)) and the concatenation
/// site 2 = (a, b, a', b'); scores = (2 a + 1 + 2 a', 6 b).
Network tiny_branch() {
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

double rate(const QuantizedNetwork& q, const GoldenRun& g, FaultTarget t, std::vector<Fault> f) {
  ReferenceEngine e(q, g, t);
  return static_cast<double>(e.failures(f)) / static_cast<double>(g.correct());
}

}  // namespace

TEST(Flip, KnownCodesSigned) {
  const FixedPoint s8{8, 3, true};
  EXPECT_EQ(flip_bit(1, 7, s8), -127);
  EXPECT_EQ(flip_bit(0, 7, s8), -128);
  EXPECT_EQ(flip_bit(-128, 7, s8), 0);
  EXPECT_EQ(flip_bit(-1, 7, s8), 127);
  EXPECT_EQ(flip_bit(127, 7, s8), -1);
  EXPECT_EQ(flip_bit(5, 0, s8), 4);
  EXPECT_EQ(flip_bit(5, 1, s8), 7);
  EXPECT_EQ(flip_bit(-3, 2, s8), -7);  // 11111101 -> 11111001
  const FixedPoint s4{4, 0, true};
  EXPECT_EQ(flip_bit(3, 3, s4), -5);  // 0011 -> 1011
  EXPECT_EQ(flip_bit(-8, 3, s4), 0);
}

TEST(Flip, KnownCodesUnsigned) {
  const FixedPoint u8{8, 0, false};
  EXPECT_EQ(flip_bit(1, 7, u8), 129);
  EXPECT_EQ(flip_bit(0, 7, u8), 128);
  EXPECT_EQ(flip_bit(200, 7, u8), 72);
  EXPECT_EQ(flip_bit(255, 0, u8), 254);
  const FixedPoint u4{4, 0, false};
  EXPECT_EQ(flip_bit(3, 3, u4), 11);
}

TEST(Flip, RejectsCodesAndBitsOutOfRange) {
  const FixedPoint s8{8, 0, true}, u8{8, 0, false};
  EXPECT_THROW(flip_bit(0, 8, s8), Error);
  EXPECT_THROW(flip_bit(0, -1, s8), Error);
  EXPECT_THROW(flip_bit(128, 0, s8), Error);
  EXPECT_THROW(flip_bit(-1, 0, u8), Error);
}

TEST(Flip, TensorFlipMatchesScalarAndIsAnInvolution) {
  for (const FixedPoint f : {FixedPoint{8, 0, true}, FixedPoint{8, 0, false}, FixedPoint{4, 0, true},
                             FixedPoint{4, 0, false}, FixedPoint{12, 0, true}}) {
    const auto codes = torch::arange(f.min_code(), f.max_code() + 1, torch::kFloat32);
    for (int bit = 0; bit < f.bits; ++bit) {
      const auto flipped = flip_bits(codes, bit, f);
      ASSERT_EQ(flipped.scalar_type(), torch::kFloat32);
      for (int64_t i = 0; i < codes.size(0); ++i)
        ASSERT_EQ(flipped[i].item<float>(), flip_bit(static_cast<int64_t>(codes[i].item<float>()), bit, f))
            << f.str() << " bit " << bit;
      EXPECT_TRUE(flip_bits(flipped, bit, f).equal(codes));
    }
  }
}

TEST(Golden, KeepsOnlyCorrectImages) {
  const Tiny t(tiny_chain(), true, 2);  // chunks of 2: the split must not matter
  const GoldenRun& g = t.g;
  EXPECT_EQ(g.images(), 5);
  EXPECT_EQ(g.correct(), 4);
  EXPECT_TRUE(g.predicted().equal(torch::tensor({0, 1, 1, 0, 0}, torch::kInt64)));
  EXPECT_TRUE(g.correct_index().equal(torch::tensor({0, 1, 2, 3}, torch::kInt64)));
  // Scores (a + 1, 3 b) of A..D.
  EXPECT_TRUE(g.scores().equal(
      torch::tensor({2., 0., 1., 3., 2., 3., 1., 0.}, torch::kFloat64).view({4, 2})));
  EXPECT_TRUE(g.codes(0, 0, 4).equal(torch::tensor({1.f, 0.f, 0.f, 1.f, 1.f, 1.f, 0.f, 0.f}).view({4, 2, 1, 1})));
}

// Scores (a + 1, 3 b). Signed site: an MSB flip takes 1 to -127 and 0 to -128.
//  neuron 0 MSB: A (-126, 0) fails, B (-127, 3) ok, C (-126, 3) ok, D (-127, 0) fails: 2/4
//  neuron 1 MSB: A (2, -384) ok, B (1, -381) fails, C (2, -381) fails, D (1, -384) ok: 2/4
//  neuron 0 LSB: A (1, 0) ok, B (2, 3) ok, C (1, 3) ok, D (2, 0) ok: 0/4
//  neuron 1 LSB: A (2, 3) fails, B (1, 0) fails, C (2, 0) fails, D (1, 3) fails: 4/4
//  neuron 0 bit 1: A (4, 0) ok, B (3, 3) tie -> class 0 fails, C (4, 3) fails, D (3, 0) ok: 2/4
TEST(Reference, HandWorkedRatesSigned) {
  const Tiny t(tiny_chain(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  const auto A = FaultTarget::Activations;
  EXPECT_DOUBLE_EQ(rate(q, g, A, {{0, 0, 7}}), 0.5);
  EXPECT_DOUBLE_EQ(rate(q, g, A, {{0, 1, 7}}), 0.5);
  EXPECT_DOUBLE_EQ(rate(q, g, A, {{0, 0, 0}}), 0.0);
  EXPECT_DOUBLE_EQ(rate(q, g, A, {{0, 1, 0}}), 1.0);
  EXPECT_DOUBLE_EQ(rate(q, g, A, {{0, 0, 1}}), 0.5);
  ReferenceEngine e(q, g, A);
  EXPECT_TRUE(e.failed({{0, 0, 7}}).equal(torch::tensor({true, false, false, true})));
  EXPECT_TRUE(e.failed({{0, 0, 1}}).equal(torch::tensor({false, true, true, false})));
  EXPECT_EQ(e.failures({}), 0);
}

// Unsigned site: an MSB flip takes 1 to 129 and 0 to 128.
//  neuron 0 MSB: A (130, 0) ok, B (129, 3) fails, C (130, 3) fails, D (129, 0) ok: 2/4
//  neuron 1 MSB: A (2, 384) fails, B (1, 387) ok, C (2, 387) ok, D (1, 384) fails: 2/4
TEST(Reference, HandWorkedRatesUnsigned) {
  const Tiny t(tiny_chain(), false);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  ReferenceEngine e(q, g, FaultTarget::Activations);
  EXPECT_TRUE(e.failed({{0, 0, 7}}).equal(torch::tensor({false, true, true, false})));
  EXPECT_TRUE(e.failed({{0, 1, 7}}).equal(torch::tensor({true, false, false, true})));
}

// Both MSBs at once: A (-126, -384) ok, B (-127, -381) fails, C (-126, -381) fails,
// D (-127, -384) ok: 2/4, and not the union of the single faults' failures (all four).
TEST(Reference, SeveralFaultsInOneInference) {
  const Tiny t(tiny_chain(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  ReferenceEngine e(q, g, FaultTarget::Activations);
  EXPECT_TRUE(e.failed({{0, 0, 7}, {0, 1, 7}}).equal(torch::tensor({false, true, true, false})));
  // Two flips of the same bit cancel.
  EXPECT_EQ(e.failures({{0, 1, 0}, {0, 1, 0}}), 0);
}

// Scores (2 a + 1 + 2 a', 6 b) with a' = relu(-a) (0 without faults). The MSB flip of a gives
// a* = -127 (a = 1) or -128 (a = 0), and a' = relu(127 or 128) = 127 after saturation.
// Both readers see it: A (1, 0) ok, B (-1, 6) ok, C (1, 6) ok, D (-1, 0) fails: 1/4.
// Had only the concatenation seen it (a' = 0), A and D would fail; had only the negation seen
// it, B and C would.
TEST(Reference, SiteReadByTwoBlocks) {
  const Tiny t(tiny_branch(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  ASSERT_EQ(g.correct(), 4);
  ReferenceEngine e(q, g, FaultTarget::Activations);
  EXPECT_TRUE(e.failed({{0, 0, 7}}).equal(torch::tensor({false, false, false, true})));
  // A fault in the concatenation's own memory reaches the scores only: a flipped to -127 / -128
  // there: A (-253, 0) fails, B (-255, 6) ok, C (-253, 6) ok, D (-255, 0) fails.
  EXPECT_TRUE(e.failed({{2, 0, 7}}).equal(torch::tensor({true, false, false, true})));
}

// Weights of the chain, scores = (w00 a + 1, 3 b). The MSB of w00 (1 -> -127): A (-126, 0)
// fails, B (1, 3), C (-126, 3), D (1, 0) ok: 1/4. The MSB of the identity's w11 (1 -> -127)
// makes b = relu(-127 b) = 0: B (1, 0) and C (2, 0) fail: 2/4. Both at once: A (-126, 0) and
// B (1, 0) fail, C (-126, 0) is saved, D (1, 0) ok: 2/4.
TEST(Reference, HandWorkedWeightFaults) {
  const Tiny t(tiny_chain(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  ReferenceEngine e(q, g, FaultTarget::Weights);
  EXPECT_TRUE(e.failed({{1, 0, 7}}).equal(torch::tensor({true, false, false, false})));
  EXPECT_TRUE(e.failed({{0, 3, 7}}).equal(torch::tensor({false, true, true, false})));
  EXPECT_TRUE(e.failed({{1, 0, 7}, {0, 3, 7}}).equal(torch::tensor({true, true, false, false})));
  // The network itself is unchanged: the flip lives in the engine's copy.
  EXPECT_EQ(q.weight_codes(1)[0][0][0][0].item<float>(), 1.0f);
  EXPECT_EQ(e.failures({}), 0);
  EXPECT_THROW(e.failures({{0, 4, 7}}), Error);  // the identity has 4 weights
}

TEST(Reference, RejectsFaultsOutsideTheNetwork) {
  const Tiny t(tiny_chain(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  ReferenceEngine e(q, g, FaultTarget::Activations);
  EXPECT_THROW(e.failures({{1, 0, 7}}), Error);  // the scores are not a site
  EXPECT_THROW(e.failures({{0, 2, 7}}), Error);
  EXPECT_THROW(e.failures({{0, 0, 8}}), Error);
  EXPECT_THROW(make_engine("fast", q, g, FaultTarget::Activations), Error);
}

namespace {

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
int64_t full_rerun_failures(const QuantizedNetwork& q, const GoldenRun& g,
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

}  // namespace

TEST(Reference, EqualsAFullRerunOnZooNetworks) {
  for (const bool is_signed : {true, false}) {
    ZooCase z("mnist-cnn", 24, is_signed);
    ASSERT_GE(z.g->correct(), 20);
    CampaignOptions o;
    o.campaign = "ber";
    o.ber = {1e-3, 1e-2};
    o.runs = 2;
    o.seed = 5;
    const CampaignPlan plan(*z.q, o);
    EngineOptions eo;
    eo.chunk = 10;  // several chunks
    ReferenceEngine e(*z.q, *z.g, FaultTarget::Activations, eo);
    int64_t total = 0;
    for (int64_t i = 0; i < plan.size(); ++i) {
      const auto faults = plan.faults(i);
      ASSERT_GT(faults.size(), 3u);
      const int64_t f = e.failures(faults);
      EXPECT_EQ(f, full_rerun_failures(*z.q, *z.g, faults)) << "fault set " << i;
      total += f;
    }
    // Random single MSB flips in every site.
    Rng rng(9);
    for (int s = 0; s < 4; ++s) {
      const int64_t n = z.net.shapes()[s].numel();
      for (int k = 0; k < 3; ++k) {
        const std::vector<Fault> f{{s, static_cast<int64_t>(rng.below(n)), 7}};
        EXPECT_EQ(e.failures(f), full_rerun_failures(*z.q, *z.g, f));
      }
    }
    EXPECT_GT(total, 0) << "the check needs faults that do change the answer";
  }
}

TEST(Sampling, LeveugleSampleSizeWorkedValues) {
  EXPECT_NEAR(normal_quantile(0.95), 1.959964, 1e-6);
  EXPECT_NEAR(normal_quantile(0.99), 2.575829, 1e-6);
  // n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), values computed by hand (t = 1.959964):
  EXPECT_EQ(leveugle_sample_size(1000000000000, 0.01, 0.95), 9604);  // 9603.65
  EXPECT_EQ(leveugle_sample_size(10000, 0.05, 0.95), 370);            // 369.97
  EXPECT_EQ(leveugle_sample_size(301056, 0.01, 0.95), 9307);          // 9306.79
  EXPECT_EQ(leveugle_sample_size(1000, 0.05, 0.95), 278);             // 277.73
  EXPECT_EQ(leveugle_sample_size(100, 0.1, 0.95), 50);                // 49.24
  EXPECT_EQ(leveugle_sample_size(1, 0.01, 0.95), 1);
  EXPECT_THROW(leveugle_sample_size(100, 0, 0.95), Error);
  EXPECT_THROW(leveugle_sample_size(100, 0.01, 1.0), Error);
}

TEST(Sampling, DrawsAreSeededAndHaveTheRightDistribution) {
  Rng a(42), b(42);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next(), b.next());
  // Binomial(300000, 1e-3): mean 300, variance 299.7, over 2000 draws.
  Rng r(1);
  double sum = 0, sq = 0;
  const int draws = 2000;
  for (int i = 0; i < draws; ++i) {
    const double k = static_cast<double>(draw_binomial(300000, 1e-3, r));
    sum += k;
    sq += k * k;
  }
  const double mean = sum / draws, var = sq / draws - mean * mean;
  EXPECT_NEAR(mean, 300, 3 * std::sqrt(300.0 / draws) + 0.5);
  EXPECT_NEAR(var, 299.7, 40);
  EXPECT_EQ(draw_binomial(1000, 0, r), 0);
  EXPECT_EQ(draw_binomial(1000, 1, r), 1000);
  const auto d = draw_distinct(50, 20, r);
  EXPECT_EQ(std::set<int64_t>(d.begin(), d.end()).size(), 20u);
  EXPECT_TRUE(std::is_sorted(d.begin(), d.end()));
  EXPECT_GE(d.front(), 0);
  EXPECT_LT(d.back(), 50);
  EXPECT_EQ(draw_distinct(7, 7, r), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
}

TEST(Campaign, PlansEnumerateTheirFaults) {
  ZooCase z("mnist-cnn", 4);
  CampaignOptions o;
  o.sites = {0, 3};
  const CampaignPlan msb(*z.q, o);
  EXPECT_EQ(msb.size(), 12544 + 64);
  EXPECT_EQ(msb.faults(0), (std::vector<Fault>{{0, 0, 7}}));
  EXPECT_EQ(msb.faults(12544), (std::vector<Fault>{{3, 0, 7}}));
  EXPECT_EQ(msb.faults(12544 + 63), (std::vector<Fault>{{3, 63, 7}}));
  o.bits = BitChoice::All;
  const CampaignPlan all(*z.q, o);
  EXPECT_EQ(all.size(), (12544 + 64) * 8);
  EXPECT_EQ(all.faults(8 * 12544 + 3), (std::vector<Fault>{{3, 0, 3}}));
  o.bits = BitChoice::One;
  o.bit = 2;
  EXPECT_EQ(CampaignPlan(*z.q, o).faults(5), (std::vector<Fault>{{0, 5, 2}}));
  o.bit = 8;
  EXPECT_THROW(CampaignPlan(*z.q, o), Error);
  o = {};
  o.sites = {4};  // the scores are not a site
  EXPECT_THROW(CampaignPlan(*z.q, o), Error);
  o.sites = {};
  o.campaign = "random";
  EXPECT_THROW(CampaignPlan(*z.q, o), Error);
  // Sampled: as many distinct faults as the formula asks for.
  o = {};
  o.campaign = "sampled";
  o.error = 0.05;
  const CampaignPlan s(*z.q, o);
  EXPECT_EQ(s.size(), leveugle_sample_size(37696 * 8, 0.05, 0.95));
  std::set<std::tuple<int, int64_t, int>> seen;
  for (int64_t i = 0; i < s.size(); ++i) {
    const Fault f = s.faults(i)[0];
    seen.insert({f.block, f.index, f.bit});
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), s.size());
  // Weights: every weighted block by default.
  o = {};
  o.target = FaultTarget::Weights;
  const CampaignPlan w(*z.q, o);
  int64_t weights = 0;
  for (const auto& b : z.net.blocks)
    if (b.weighted()) weights += b.weight.numel();
  EXPECT_EQ(w.size(), weights);
}

TEST(Campaign, SelectedElementsLimitAnExhaustivePlan) {
  ZooCase z("mnist-cnn", 4);
  CampaignOptions o;
  o.sites = {0, 3};
  o.elements = {5, 12544 + 2, 12544 + 63};  // neuron 5 of site 0; neurons 2 and 63 of site 3
  const CampaignPlan msb(*z.q, o);
  ASSERT_EQ(msb.size(), 3);
  EXPECT_EQ(msb.faults(0), (std::vector<Fault>{{0, 5, 7}}));
  EXPECT_EQ(msb.faults(2), (std::vector<Fault>{{3, 63, 7}}));
  o.bits = BitChoice::All;
  const CampaignPlan all(*z.q, o);
  ASSERT_EQ(all.size(), 24);
  EXPECT_EQ(all.faults(8 + 3), (std::vector<Fault>{{3, 2, 3}}));
  o.bits = BitChoice::Msb;
  o.elements = {7, 7};
  EXPECT_THROW(CampaignPlan(*z.q, o), Error);  // not strictly increasing
  o.elements = {12544 + 64};
  EXPECT_THROW(CampaignPlan(*z.q, o), Error);  // beyond the fault space
}

TEST(Campaign, BerDrawsDependOnSeedAndIndexOnly) {
  ZooCase z("mnist-cnn", 4);
  CampaignOptions o;
  o.campaign = "ber";
  o.ber = {1e-3, 1e-2};
  o.runs = 40;
  const CampaignPlan a(*z.q, o), b(*z.q, o);
  double flips = 0;
  for (int64_t i = 0; i < a.size(); ++i) {
    const auto fa = a.faults(i);
    ASSERT_EQ(fa, b.faults(i));
    if (i >= 40) flips += static_cast<double>(fa.size());
    std::set<std::tuple<int, int64_t, int>> u;
    for (const auto& f : fa) u.insert({f.block, f.index, f.bit});
    ASSERT_EQ(u.size(), fa.size()) << "a bit flips at most once";
  }
  // 37696 neurons x 8 bits x 1e-2 = 3015.7 flips a run on average.
  EXPECT_NEAR(flips / 40, 3015.7, 3 * std::sqrt(3015.7 / 40));
  o.seed = 2;
  EXPECT_NE(CampaignPlan(*z.q, o).faults(0), a.faults(0));
}

TEST(Campaign, ResumeAfterAStopGivesTheIdenticalResult) {
  ZooCase z("mnist-cnn", 12);
  CampaignOptions o;
  o.sites = {3};
  const CampaignPlan plan(*z.q, o);
  ReferenceEngine e(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts full = run_campaign(plan, e, z.g->correct(), {});
  ASSERT_TRUE(full.complete());
  ASSERT_GT(*std::max_element(full.failures.begin(), full.failures.end()), 0);

  const fs::path dir = fs::temp_directory_path() / ("flipguard-resume-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  RunOptions r;
  r.checkpoint = (dir / "checkpoint.json").string();
  r.fingerprint = {{"case", "resume"}};
  r.stop_after = 25;
  const CampaignCounts part = run_campaign(plan, e, z.g->correct(), r);
  EXPECT_FALSE(part.complete());
  EXPECT_EQ(std::count(part.failures.begin(), part.failures.end(), -1), 64 - 25);
  ASSERT_TRUE(fs::exists(r.checkpoint));
  r.resume = true;
  const CampaignCounts second = run_campaign(plan, e, z.g->correct(), r);  // 25 more
  EXPECT_EQ(std::count(second.failures.begin(), second.failures.end(), -1), 64 - 50);
  r.stop_after = 0;
  const CampaignCounts rest = run_campaign(plan, e, z.g->correct(), r);
  ASSERT_TRUE(rest.complete());
  EXPECT_EQ(rest.failures, full.failures);
  // Several workers, with and without a stop: the same counts.
  for (const std::string name : {"reference", "incremental"}) {
    auto engine = make_engine(name, *z.q, *z.g, FaultTarget::Activations);
    RunOptions w;
    w.workers = 3;
    EXPECT_EQ(run_campaign(plan, *engine, z.g->correct(), w).failures, full.failures) << name;
    fs::remove(r.checkpoint);
    w.checkpoint = r.checkpoint;
    w.stop_after = 10;
    EXPECT_FALSE(run_campaign(plan, *engine, z.g->correct(), w).complete());
    w.stop_after = 0;
    w.resume = true;
    EXPECT_EQ(run_campaign(plan, *engine, z.g->correct(), w).failures, full.failures) << name;
  }
  // A checkpoint of another campaign is refused.
  r.fingerprint = {{"case", "other"}};
  EXPECT_THROW(run_campaign(plan, e, z.g->correct(), r), Error);
  fs::remove_all(dir);
}

TEST(Campaign, StatisticsOfRates) {
  const RateStats s = rate_stats({0.0, 0.1, 0.2, 0.3, 0.0});
  EXPECT_EQ(s.count, 5);
  EXPECT_DOUBLE_EQ(s.worst, 0.3);
  EXPECT_NEAR(s.mean, 0.12, 1e-15);
  EXPECT_DOUBLE_EQ(s.q50, 0.1);
  EXPECT_NEAR(s.q90, 0.26, 1e-15);  // between 0.2 and 0.3 at 0.6
  EXPECT_EQ(s.nonzero, 3);
  // Mean 2, sample variance 2/3 over 4 values: half width 1.959964 * sqrt(2/3) / 2.
  const Interval iv = mean_interval({1, 2, 3, 2}, 0.95);
  EXPECT_DOUBLE_EQ(iv.mean, 2.0);
  EXPECT_NEAR(iv.half_width, 1.959964 * std::sqrt(2.0 / 3.0) / 2, 1e-6);
  // Sampling all of a population leaves no uncertainty.
  EXPECT_NEAR(mean_interval({1, 2, 3, 2}, 0.95, 4).half_width, 0.0, 1e-12);
  const auto h = rate_histogram({0.0, 0.005, 0.01, 0.03, 1.0}, 0.01);
  ASSERT_EQ(h.size(), 100u);
  EXPECT_EQ(h[0], 2);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[3], 1);
  EXPECT_EQ(h[99], 1);
}

namespace {
std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

// The exhaustive MSB campaign of the tiny chain (2/4 and 2/4, above) written out.
TEST(Results, ExhaustiveCampaignFiles) {
  const Tiny t(tiny_chain(), true);
  const QuantizedNetwork& q = t.q;
  const GoldenRun& g = t.g;
  CampaignOptions o;
  o.bits = BitChoice::All;
  const CampaignPlan plan(q, o);
  ReferenceEngine e(q, g, FaultTarget::Activations);
  const CampaignCounts c = run_campaign(plan, e, g.correct(), {});
  // Element-major, bit-minor: neuron 0 bits 0..7, then neuron 1.
  ASSERT_EQ(c.failures.size(), 16u);
  EXPECT_EQ(c.failures[0], 0);  // neuron 0 LSB
  EXPECT_EQ(c.failures[1], 2);  // neuron 0 bit 1
  EXPECT_EQ(c.failures[7], 2);  // neuron 0 MSB
  EXPECT_EQ(c.failures[8], 4);  // neuron 1 LSB
  EXPECT_EQ(c.failures[15], 2); // neuron 1 MSB
  const fs::path dir = fs::temp_directory_path() / ("flipguard-results-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::vector<std::string> warnings;
  const auto s = write_campaign_results(dir.string(), plan, c, g, {{"model", "tiny"}}, 0.25, warnings);
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  const auto j = nlohmann::json::parse(slurp(dir / "summary.json"));
  EXPECT_EQ(j, s);
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["images"], 4);
  EXPECT_EQ(j["golden"]["images"], 5);
  EXPECT_DOUBLE_EQ(j["overall"]["worst_case"].get<double>(), 1.0);
  EXPECT_EQ(j["overall"]["worst_fault"]["index"], 1);
  EXPECT_EQ(j["overall"]["worst_fault"]["bit"], 0);
  EXPECT_EQ(j["sites"][0]["faults"], 16);
  const std::string csv = slurp(dir / "rates_site0.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "index,c,y,x,bit,failure_rate");
  EXPECT_NE(csv.find("\n1,1,0,0,0,1\n"), std::string::npos) << csv;
  // Histogram bins of width 0.25: rates are the failures / 4.
  int64_t counts[5] = {0, 0, 0, 0, 0};
  for (int64_t f : c.failures) counts[std::min<int64_t>(f, 3)]++;
  const std::string hist = slurp(dir / "histogram.csv");
  EXPECT_NE(hist.find("0,0.25," + std::to_string(counts[0]) + ","), std::string::npos) << hist;
  EXPECT_TRUE(fs::exists(dir / "histogram.svg"));
  // numpy reads the per-neuron rates with their shape: C x H x W x bits.
  const std::string cmd = "/usr/bin/python3 -c \"import numpy as n; a = n.load('" + (dir / "rates_site0.npy").string() +
                          "'); print(a.shape, a[1,0,0,0], a[0,0,0,7])\"";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {0};
  const size_t n = fread(buf, 1, sizeof buf - 1, p);
  ASSERT_EQ(pclose(p), 0) << "python3 with numpy is installed by ./run setup";
  EXPECT_EQ(std::string(buf, n), "(2, 1, 1, 8) 1.0 0.5\n");
  // Bin width 0: chosen from the worst rate (1.0) and the 4 images: max(1/25, 1/4) -> 0.5.
  const auto automatic = write_campaign_results(dir.string(), plan, c, g, {}, 0, warnings);
  EXPECT_DOUBLE_EQ(automatic["histogram"]["bin_width"].get<double>(), 0.5);
  fs::remove_all(dir);
}

TEST(Results, AutomaticBinWidth) {
  // 1, 2 or 5 times a power of ten: at most 25 bins up to the worst rate, no finer than an image.
  EXPECT_DOUBLE_EQ(auto_bin_width(0.2932, 9818), 0.02);   // 0.2932 / 25 = 0.0117
  EXPECT_DOUBLE_EQ(auto_bin_width(0.0175, 9817), 0.001);  // 0.0007
  EXPECT_DOUBLE_EQ(auto_bin_width(0.0465, 861), 0.002);   // 0.00186, one image 0.00116
  EXPECT_DOUBLE_EQ(auto_bin_width(0.0, 98), 0.02);        // one image 0.0102
  EXPECT_DOUBLE_EQ(auto_bin_width(0.25, 1000000), 0.01);  // exactly 25 bins
  EXPECT_DOUBLE_EQ(auto_bin_width(1.0, 10), 0.1);
  EXPECT_DOUBLE_EQ(auto_bin_width(0.05, 0), 0.01);        // no images: 0.01
  EXPECT_DOUBLE_EQ(auto_bin_width(1.0, 1), 1.0);
}

// The incremental engine against the reference, fault by fault: every site, several bit
// positions, both signedness modes, both MNIST architectures (a pooling block, a global pooling
// behind the last convolution), and the hand-worked networks (a concatenation).
TEST(Incremental, IdenticalToTheReference) {
  int64_t nonzero = 0;
  for (const char* arch : {"mnist-cnn", "mnist-cnn-opt"})
    for (const bool is_signed : {true, false}) {
      ZooCase z(arch, 60, is_signed);
      ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
      EngineOptions eo;
      eo.chunk = 37;  // several chunks
      IncrementalEngine inc(*z.q, *z.g, FaultTarget::Activations, eo);
      Rng rng(is_signed ? 21 : 22);
      int64_t checked = 0;
      for (int s : z.net.sites()) {
        const int64_t n = z.net.shapes()[s].numel();
        for (int k = 0; k < 12; ++k) {
          const int bit = k < 6 ? 7 : static_cast<int>(rng.below(8));
          // Corners matter for the windows; the most active neuron of an image is the one whose
          // MSB flip most often changes answers.
          const int64_t idx = k == 0   ? 0
                              : k == 1 ? n - 1
                              : k < 6  ? z.g->stored(s)[k].flatten().argmax().item<int64_t>()
                                       : static_cast<int64_t>(rng.below(n));
          const std::vector<Fault> f{{s, idx, bit}};
          const int64_t r = ref.failures(f);
          ASSERT_TRUE(inc.scores(f).equal(ref.scores(f))) << arch << " site " << s << " neuron " << idx;
          ASSERT_EQ(inc.failures(f), r) << arch << (is_signed ? " s8" : " u8") << " site " << s
                                        << " neuron " << idx << " bit " << bit;
          nonzero += r > 0;
          ++checked;
        }
      }
      EXPECT_GT(checked, 0);
    }
  // Unsigned sites rarely fail (an MSB flip adds 128 to a small code), signed ones often.
  EXPECT_GE(nonzero, 6) << "the comparison needs faults that change answers";
  for (const bool branch : {false, true}) {
    const Tiny t(branch ? tiny_branch() : tiny_chain(), true);
    const Network& net = t.net;
    const QuantizedNetwork& q = t.q;
    const GoldenRun& g = t.g;
    ReferenceEngine ref(q, g, FaultTarget::Activations);
    IncrementalEngine inc(q, g, FaultTarget::Activations);
    for (int s : net.sites())
      for (int64_t i = 0; i < net.shapes()[s].numel(); ++i)
        for (int bit = 0; bit < 8; ++bit)
          ASSERT_EQ(inc.failures({{s, i, bit}}), ref.failures({{s, i, bit}}))
              << "site " << s << " neuron " << i << " bit " << bit;
  }
}

// The CIFAR-10 networks (strided pooling, deeper cones, 3 input channels), with random weights on
// random images: the faulty class scores themselves must be equal, whether or not the answer
// changes.
TEST(Incremental, SameScoresAsTheReferenceOnCifarNetworks) {
  for (const char* arch : {"cifar-cnn", "cifar-cnn-opt"}) {
    const RandomCifar r(arch);
    const Network& net = r.net;
    const QuantizedNetwork& q = r.q;
    const GoldenRun& g = r.g;
    EngineOptions eo;
    eo.chunk = 4;
    ReferenceEngine ref(q, g, FaultTarget::Activations, eo);
    IncrementalEngine inc(q, g, FaultTarget::Activations, eo);
    Rng rng(3);
    int changed = 0;
    for (int s : net.sites()) {
      const Shape sh = net.shapes()[s];
      const std::vector<int64_t> picks{0, sh.numel() - 1, sh.w - 1, (sh.h - 1) * sh.w,
                                       static_cast<int64_t>(rng.below(sh.numel())),
                                       g.stored(s)[0].flatten().argmax().item<int64_t>()};
      for (size_t k = 0; k < picks.size(); ++k) {
        const std::vector<Fault> f{{s, picks[k], k % 2 ? 7 : static_cast<int>(rng.below(8))}};
        const auto want = ref.scores(f);
        ASSERT_TRUE(inc.scores(f).equal(want)) << arch << " site " << s << " neuron " << picks[k];
        changed += !want.equal(g.scores());
      }
    }
    EXPECT_GE(changed, 10) << arch << ": the comparison needs faults that change the scores";
  }
}

namespace {

/// Random single faults of every site: corners, the most active neuron of an image, random
/// neurons; the MSB and random bit positions.
std::vector<std::vector<Fault>> random_single_faults(const Network& net, const GoldenRun& g,
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
std::vector<int64_t> cone_counts(ConeEngine& e, const std::vector<std::vector<Fault>>& sets,
                                 int64_t images, int threads) {
  std::vector<int64_t> counts(sets.size(), 0);
  e.failures_over(sets, 0, images / 3, threads, counts);
  e.failures_over(sets, images / 3, images, threads, counts);
  return counts;
}

// The cone engine with pruning on and off, vector instructions on and off: every combination must
// give the counts `want`. Returns the statistics of each run, with whether it pruned.
std::vector<std::pair<bool, ConeStats>> expect_cone_counts(
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

}  // namespace

// The cone engine against the reference, fault by fault: both MNIST architectures (a pooling
// block, max pooling behind a convolution, a summed last block), both signedness modes, pruning
// on and off, vector instructions on and off.
TEST(Cone, IdenticalToTheReferenceOnMnistNetworks) {
  int64_t nonzero = 0, pruned = 0;
  for (const char* arch : {"mnist-cnn", "mnist-cnn-opt"})
    for (const bool is_signed : {true, false}) {
      ZooCase z(arch, 60, is_signed);
      ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
      const auto sets = random_single_faults(z.net, *z.g, is_signed ? 31 : 32, 24);
      std::vector<int64_t> want;
      for (const auto& f : sets) want.push_back(ref.failures(f));
      for (const auto& [prune, st] :
           expect_cone_counts(*z.q, *z.g, sets, want, 3, std::string(arch) + (is_signed ? " s8" : " u8"))) {
        EXPECT_EQ(st.pairs, static_cast<int64_t>(sets.size()) * z.g->correct());
        EXPECT_EQ(st.pairs, st.vanished + st.pruned + st.scored);
        if (!prune) EXPECT_EQ(st.pruned, 0);
        pruned += st.pruned;
      }
      for (int64_t w : want) nonzero += w > 0;
    }
  EXPECT_GE(nonzero, 10) << "the comparison needs faults that change answers";
  EXPECT_GT(pruned, 0) << "the comparison needs images that the bound skips";
}

// The CIFAR-10 networks (3 input channels, strided pooling, a global pooling block, deeper
// cones), trained (models/), on random images labelled with their own golden answers. (With
// random weights no fault changed an answer, and doubling every change the vectorized rounding
// emits went unnoticed.)
TEST(Cone, IdenticalToTheReferenceOnCifarNetworks) {
  for (const char* arch : {"cifar-cnn", "cifar-cnn-opt"}) {
    const RandomCifar r(arch, true);
    const Network& net = r.net;
    const QuantizedNetwork& q = r.q;
    const GoldenRun& g = r.g;
    ReferenceEngine ref(q, g, FaultTarget::Activations);
    const auto sets = random_single_faults(net, g, 41, 10);
    std::vector<int64_t> want;
    for (const auto& f : sets) want.push_back(ref.failures(f));
    EXPECT_GE(std::count_if(want.begin(), want.end(), [](int64_t w) { return w > 0; }), 10)
        << arch << ": the comparison needs faults that change answers";
    for (const auto& [prune, st] : expect_cone_counts(q, g, sets, want, 2, arch))
      EXPECT_GT(st.scored, 0) << arch << ": changes must reach the class scores";
  }
}

// What the cone kernel does not handle goes to the incremental engine, with the same results.
TEST(Cone, OtherGraphsAndFaultSetsGoToTheIncrementalEngine) {
  const Tiny branch(tiny_branch(), true);
  ConeEngine cone(branch.q, branch.g, FaultTarget::Activations);
  std::string why;
  EXPECT_FALSE(cone.supported(&why));
  EXPECT_NE(why.find("does not read just the block before it"), std::string::npos) << why;
  EXPECT_FALSE(cone.image_major({{{0, 0, 7}}}));
  std::vector<int64_t> counts(1, 0);
  EXPECT_THROW(cone.failures_over({{{0, 0, 7}}}, 0, 1, 1, counts), Error);
  ReferenceEngine ref(branch.q, branch.g, FaultTarget::Activations);
  for (int s : branch.net.sites())
    for (int64_t i = 0; i < branch.net.shapes()[s].numel(); ++i)
      for (int bit = 0; bit < 8; ++bit)
        ASSERT_EQ(cone.failures({{s, i, bit}}), ref.failures({{s, i, bit}}));
  // The hand-worked chain is one the kernel handles: every neuron and bit, exhaustively.
  const Tiny chain(tiny_chain(), true);
  ConeEngine c2(chain.q, chain.g, FaultTarget::Activations);
  ASSERT_TRUE(c2.supported());
  std::vector<std::vector<Fault>> sets;
  for (int64_t i = 0; i < 2; ++i)
    for (int bit = 0; bit < 8; ++bit) sets.push_back({{0, i, bit}});
  EXPECT_FALSE(c2.image_major({{{0, 0, 7}, {0, 1, 7}}})) << "several faults at once";
  ConeEngine weights(chain.q, chain.g, FaultTarget::Weights);
  EXPECT_FALSE(weights.image_major(sets));
  const auto got = cone_counts(c2, sets, chain.g.correct(), 2);
  ReferenceEngine r2(chain.q, chain.g, FaultTarget::Activations);
  for (size_t k = 0; k < sets.size(); ++k) EXPECT_EQ(got[k], r2.failures(sets[k])) << k;
  // site 0 = (a, b), scores (a + 1, 3 b). The MSB of a turns A's a = 1 into -127 (scores
  // (-126, 0)) and D's a = 0 into -128 (scores (-127, 0)): both fail; B and C keep class 1.
  EXPECT_EQ(got[7], 2);
}

// An image-major campaign stopped and resumed (partial counts in the checkpoint) equals an
// uninterrupted one, and the fault-major reference.
/// A sampled campaign of sites 1 and 2 of mnist-cnn-opt, a few hundred faults.
CampaignOptions sampled_sites_1_2() {
  CampaignOptions o;
  o.sites = {1, 2};
  o.campaign = "sampled";
  o.error = 0.05;
  return o;
}

TEST(Campaign, ImageMajorResumeGivesTheIdenticalResult) {
  ZooCase z("mnist-cnn-opt", 40);
  const CampaignPlan plan(*z.q, sampled_sites_1_2());
  ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts want = run_campaign(plan, ref, z.g->correct(), {});
  ConeEngine cone(*z.q, *z.g, FaultTarget::Activations);
  RunOptions r;
  r.image_chunk = 7;
  r.workers = 2;
  EXPECT_EQ(run_campaign(plan, cone, z.g->correct(), r).failures, want.failures);
  const fs::path dir = fs::temp_directory_path() / ("flipguard-cone-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  r.checkpoint = (dir / "checkpoint.json").string();
  r.fingerprint = {{"case", "image-major"}};
  r.checkpoint_seconds = 0;
  r.stop_after = plan.size() / 4;  // a quarter of the work: some image chunks
  const CampaignCounts part = run_campaign(plan, cone, z.g->correct(), r);
  EXPECT_FALSE(part.complete());
  std::ifstream in(r.checkpoint);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto j = nlohmann::json::parse(ss.str());
  ASSERT_TRUE(j.contains("partial"));
  const int64_t images_done = j["partial"]["images"].get<int64_t>();
  EXPECT_GT(images_done, 0);
  EXPECT_LT(images_done, z.g->correct());
  r.stop_after = 0;
  r.resume = true;
  const CampaignCounts rest = run_campaign(plan, cone, z.g->correct(), r);
  ASSERT_TRUE(rest.complete());
  EXPECT_EQ(rest.failures, want.failures);
  // A fault-major engine resuming that checkpoint recomputes the pending sets: the same counts.
  fs::remove(r.checkpoint);
  r.resume = false;
  r.stop_after = plan.size() / 4;
  run_campaign(plan, cone, z.g->correct(), r);
  r.stop_after = 0;
  r.resume = true;
  EXPECT_EQ(run_campaign(plan, ref, z.g->correct(), r).failures, want.failures);
  fs::remove_all(dir);
}

// Fully-connected blocks, a strided convolution and a max pooling block, which the zoo does not
// have: convolution (stride 2) -> max pooling block -> fully-connected with ReLU ->
// fully-connected scores; random weights and images, every neuron and bit against the reference.
TEST(Cone, FullyConnectedStridedAndPoolingBlocks) {
  torch::manual_seed(3);
  Network net;
  net.arch = "fc-test";
  net.input = {2, 8, 8};
  net.input_mean = {0.5, 0.5};
  net.input_std = {0.25, 0.25};
  Block conv;
  conv.name = "conv";
  conv.op = Op::Conv;
  conv.out_channels = 6;
  conv.kernel = 3;
  conv.stride = 2;
  conv.padding = 1;
  conv.weight = torch::randn({6, 2, 3, 3}) * 0.4;
  conv.bias = torch::randn({6}) * 0.1;
  conv.relu = true;
  net.blocks.push_back(conv);  // 6 x 4 x 4
  Block pool;
  pool.name = "pool";
  pool.op = Op::Pool;
  pool.inputs = {0};
  pool.pool = PoolSpec::max(2, 2);
  net.blocks.push_back(pool);  // 6 x 2 x 2
  Block fc;
  fc.name = "fc";
  fc.op = Op::Linear;
  fc.inputs = {1};
  fc.out_channels = 12;
  fc.weight = torch::randn({12, 24}) * 0.3;
  fc.bias = torch::randn({12}) * 0.1;
  fc.relu = true;
  net.blocks.push_back(fc);  // 12 x 1 x 1
  Block scores = fc;
  scores.name = "scores";
  scores.inputs = {2};
  scores.out_channels = 5;
  scores.weight = torch::randn({5, 12}) * 0.5;
  scores.bias = torch::randn({5}) * 0.1;
  scores.relu = false;
  net.blocks.push_back(scores);
  net.validate();
  auto gen = at::detail::createCPUGenerator(5);
  const auto x = torch::randint(0, 256, {40, 2, 8, 8}, gen, torch::kUInt8);
  QuantOptions o;
  o.refine = false;
  const QuantizedNetwork q(net, calibrate(net, x, o));
  const GoldenRun g(q, x, q.scores(x).argmax(1), 16);
  ReferenceEngine ref(q, g, FaultTarget::Activations);
  std::vector<std::vector<Fault>> sets;
  for (int s : net.sites())
    for (int64_t i = 0; i < net.shapes()[s].numel(); ++i)
      for (int bit = 0; bit < 8; ++bit) sets.push_back({{s, i, bit}});
  int64_t failing = 0;
  for (const bool simd : {true, false}) {
    EngineOptions eo;
    eo.simd = simd;
    ConeEngine cone(q, g, FaultTarget::Activations, eo);
    std::string why;
    ASSERT_TRUE(cone.supported(&why)) << why;
    const auto got = cone_counts(cone, sets, g.correct(), 2);
    for (size_t k = 0; k < sets.size(); ++k) {
      const int64_t want = ref.failures(sets[k]);
      ASSERT_EQ(got[k], want) << "site " << sets[k][0].block << " neuron " << sets[k][0].index
                              << " bit " << sets[k][0].bit;
      failing += want > 0;
    }
  }
  EXPECT_GT(failing, 20) << "the comparison needs faults that change answers";
  // The incremental engine: windows of the convolution and the pooling, the fully-connected blocks
  // whole.
  IncrementalEngine inc(q, g, FaultTarget::Activations);
  for (size_t k = 0; k < sets.size(); k += 7) ASSERT_EQ(inc.failures(sets[k]), ref.failures(sets[k]));
}

namespace {

Block random_conv(const std::string& name, int input, int64_t in_c, int64_t out_c, int kernel,
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
Network mini_squeezenet() {
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

}  // namespace

// Windows through branches, concatenations and pooling with ceil_mode and padding (the imported
// SqueezeNet's graph): the incremental engine's faulty class scores equal the reference's for
// faults at the corners and edges of every site (where ceil_mode's partial windows are), the most
// active neurons and random ones, whatever the bit.
TEST(Incremental, SameScoresAsTheReferenceOnASqueezeNetGraph) {
  const Network net = mini_squeezenet();
  auto gen = at::detail::createCPUGenerator(23);
  const auto x = torch::randint(0, 256, {24, 3, 25, 25}, gen, torch::kUInt8);
  QuantOptions qo;
  qo.refine = false;
  const QuantizedNetwork q(net, calibrate(net, x, qo));
  const GoldenRun g(q, x, q.scores(x).argmax(1), 24);
  EngineOptions eo;
  eo.chunk = 10;  // several chunks
  ReferenceEngine ref(q, g, FaultTarget::Activations, eo);
  IncrementalEngine inc(q, g, FaultTarget::Activations, eo);
  ConeEngine cone(q, g, FaultTarget::Activations, eo);
  EXPECT_FALSE(cone.supported()) << "the cone engine takes straight chains only";
  Rng rng(29);
  int changed = 0, failing = 0, checked = 0;
  for (int s : net.sites()) {
    const Shape sh = net.shapes()[s];
    std::vector<int64_t> picks{0, sh.numel() - 1, sh.w - 1, (sh.h - 1) * sh.w, sh.numel() - sh.w};
    for (int k = 0; k < 4; ++k) {
      picks.push_back(g.stored(s)[k].flatten().argmax().item<int64_t>());
      picks.push_back(static_cast<int64_t>(rng.below(sh.numel())));
    }
    for (size_t k = 0; k < picks.size(); ++k) {
      const std::vector<Fault> f{{s, picks[k], k % 3 == 2 ? static_cast<int>(rng.below(8)) : 7}};
      const auto want = ref.scores(f);
      ASSERT_TRUE(inc.scores(f).equal(want))
          << net.blocks[s].name << " neuron " << picks[k] << " bit " << f[0].bit;
      ASSERT_EQ(cone.failures(f), ref.failures(f)) << net.blocks[s].name << " neuron " << picks[k];
      changed += !want.equal(g.scores());
      failing += ref.failures(f) > 0;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 13 * static_cast<int>(net.sites().size()));
  EXPECT_GE(changed, 60) << "the comparison needs faults that change the scores";
  EXPECT_GE(failing, 10) << "the comparison needs faults that change answers";
}

// Distributed runs: each rank evaluates every ranks-th fault set and leaves the others at -1, so
// the element-wise maximum of the ranks' counts (what the MPI merge computes) is the whole result.
TEST(Campaign, RanksSplitTheFaultSetsAndTheirMaximumIsTheWholeResult) {
  ZooCase z("mnist-cnn-opt", 41);
  const CampaignPlan plan(*z.q, sampled_sites_1_2());
  ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts want = run_campaign(plan, ref, z.g->correct(), {});
  ASSERT_TRUE(want.complete());
  for (const int ranks : {2, 3}) {
    ConeEngine cone(*z.q, *z.g, FaultTarget::Activations);
    std::vector<int64_t> merged(static_cast<size_t>(plan.size()), -1);
    for (int rank = 0; rank < ranks; ++rank) {
      RunOptions r;
      r.rank = rank;
      r.ranks = ranks;
      // Rank 0 on the image-major cone engine, the others fault-major on the reference.
      const CampaignCounts c = run_campaign(plan, rank == 0 ? static_cast<Engine&>(cone)
                                                            : static_cast<Engine&>(ref),
                                            z.g->correct(), r);
      for (int64_t i = 0; i < plan.size(); ++i) {
        EXPECT_EQ(c.failures[i] >= 0, i % ranks == rank) << "fault set " << i;
        merged[i] = std::max(merged[i], c.failures[i]);
      }
    }
    EXPECT_EQ(merged, want.failures) << ranks << " ranks";
  }
  RunOptions bad;
  bad.rank = 2;
  bad.ranks = 2;
  EXPECT_THROW(run_campaign(plan, ref, z.g->correct(), bad), Error);
}

// ---- Range restriction (harden --method ranges) --------------------------------------------

TEST(Ranges, ClampFlippedCodesIntoTheRestriction) {
  FixedPoint f;  // s8
  f.restricted = true;
  f.range_lo = 0;
  f.range_hi = 45;
  EXPECT_EQ(flip_bit(10, 7, f), 0);   // -118 is below the range
  EXPECT_EQ(flip_bit(10, 6, f), 45);  // 74 is above it
  EXPECT_EQ(flip_bit(10, 0, f), 11);  // inside: unchanged
  const auto codes = torch::tensor({10, 10, 10, 40}, torch::kInt64);
  EXPECT_TRUE(flip_bits(codes, 7, f).equal(torch::tensor({0, 0, 0, 0}, torch::kInt64)));
  EXPECT_TRUE(flip_bits(codes, 3, f).equal(torch::tensor({2, 2, 2, 32}, torch::kInt64)));
  f.restricted = false;
  EXPECT_EQ(flip_bit(10, 7, f), -118);
}

TEST(Ranges, RestrictionIsTheRangeOfTheCodesOnTheProfilingImages) {
  const Model m = load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-opt-mnist-q8.fgm");
  const Dataset d = load_dataset(parse_data_spec("mnist"), Split::Train).head(300);
  const QuantFormats r = restrict_ranges(m.net, *m.quant, d.images, 128);
  const QuantizedNetwork plain(m.net, *m.quant), restricted(m.net, r);
  const auto x = plain.quantize_input(d.images);
  const auto a = plain.forward_all(x), b = restricted.forward_all(x);
  for (int s : m.net.sites()) {
    EXPECT_TRUE(r.act[s].restricted);
    EXPECT_EQ(r.act[s].range_lo, static_cast<int64_t>(a[s].min().item<double>())) << s;
    EXPECT_EQ(r.act[s].range_hi, static_cast<int64_t>(a[s].max().item<double>())) << s;
    EXPECT_TRUE(a[s].equal(b[s])) << "the profiled images are never clamped, site " << s;
  }
  // ReLU sites: nothing negative was ever written, and the largest code is below the word's.
  EXPECT_EQ(r.act[0].range_lo, 0);
  EXPECT_LT(r.act[2].range_hi, 127);
  // The restriction survives the model file.
  const std::string file =
      (fs::temp_directory_path() / ("flipguard_ranges_" + std::to_string(getpid()) + ".fgm")).string();
  save_model(Model{m.net, r, {}}, file);
  EXPECT_TRUE(load_model(file).quant.value() == r);
  fs::remove(file);
  // Restricting a restricted model profiles the unrestricted one.
  EXPECT_TRUE(restrict_ranges(m.net, r, d.images, 100) == r);
}

// Every engine evaluates a range-restricted network as the reference does: restrictions taken on
// other images than the test images, so that the golden pass clamps too.
TEST(Ranges, AllEnginesAgreeOnARestrictedNetwork) {
  int64_t fewer = 0, more = 0;
  for (const bool is_signed : {true, false}) {
    ZooCase z("mnist-cnn-opt", 60, is_signed);
    const Dataset profile = load_dataset(parse_data_spec("mnist"), Split::Train).head(40);
    const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(60);
    const QuantizedNetwork q(z.net, restrict_ranges(z.net, z.q->formats(), profile.images));
    const GoldenRun g(q, test.images, test.labels, 7);
    ReferenceEngine plain_ref(*z.q, *z.g, FaultTarget::Activations);
    ReferenceEngine ref(q, g, FaultTarget::Activations);
    EngineOptions eo;
    eo.chunk = 23;
    IncrementalEngine inc(q, g, FaultTarget::Activations, eo);
    const auto sets = random_single_faults(z.net, g, is_signed ? 51 : 52, 16);
    std::vector<int64_t> want;
    for (const auto& f : sets) {
      want.push_back(ref.failures(f));
      ASSERT_EQ(full_rerun_failures(q, g, f), want.back())
          << "site " << f[0].block << " neuron " << f[0].index << " bit " << f[0].bit;
      ASSERT_EQ(inc.failures(f), want.back())
          << "site " << f[0].block << " neuron " << f[0].index << " bit " << f[0].bit;
      const int64_t unrestricted = plain_ref.failures(f);
      fewer += want.back() < unrestricted;
      more += want.back() > unrestricted;
    }
    for (const bool prune : {true, false}) {
      EngineOptions co;
      co.prune = prune;
      ConeEngine cone(q, g, FaultTarget::Activations, co);
      ASSERT_TRUE(cone.supported());
      const auto got = cone_counts(cone, sets, g.correct(), 2);
      for (size_t k = 0; k < sets.size(); ++k)
        ASSERT_EQ(got[k], want[k]) << (is_signed ? "s8" : "u8") << " prune " << prune << " site "
                                   << sets[k][0].block << " neuron " << sets[k][0].index
                                   << " bit " << sets[k][0].bit;
    }
  }
  // What the restriction is for: faults that change answers change fewer of them.
  EXPECT_GT(fewer, 5);
  EXPECT_GT(fewer, 3 * more);
}
