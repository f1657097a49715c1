// Faults, the golden run and the reference engine. The expected failure rates of the tiny
// networks (fault_fixtures.hpp) are worked out by hand in the comments.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include "helpers.hpp"
#include "fault_fixtures.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

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
