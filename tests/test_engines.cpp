// The fast engines (incremental, cone) against the reference engine, fault by fault.
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

// What the cone kernel does not handle (here a concatenation) goes to the incremental engine, with
// the same results.
TEST(Cone, OtherGraphsAndFaultSetsGoToTheIncrementalEngine) {
  const Tiny branch(tiny_branch(), true);
  ConeEngine cone(branch.q, branch.g, FaultTarget::Activations);
  std::string why;
  EXPECT_FALSE(cone.supported(&why));
  EXPECT_NE(why.find("concatenation"), std::string::npos) << why;
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
  EXPECT_FALSE(cone.supported()) << "the cone engine takes no concatenations";
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
