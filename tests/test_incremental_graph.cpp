// The incremental engine on graphs with additions, grouped (depthwise) convolutions and clamps:
// it equals the reference engine and a plain full rerun on every site and bit of the residual
// and depthwise test networks, campaigns over them run through the engines and the program, and
// the channel windows it recomputes equal the whole block's.
#include <flipguard/campaign.hpp>
#include <flipguard/model_file.hpp>

#include "fault_fixtures.hpp"
#include "graph_fixtures.hpp"
#include "helpers.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

using namespace flipguard;
using namespace flipguard::test;

namespace {

/// The two graphs, trained and quantized once per process (a few seconds each), with their
/// golden run on the first 300 MNIST test images.
const TrainedGraph& trained(bool residual) {
  static const TrainedGraph r(residual_graph(), 300), d(depthwise_graph(), 300);
  return residual ? r : d;
}

std::string name_of(bool residual) { return residual ? "residual" : "depthwise"; }

std::string describe(const Fault& f) {
  return "site " + std::to_string(f.block) + " neuron " + std::to_string(f.index) + " bit " +
         std::to_string(f.bit);
}

}  // namespace

// Random neurons of every site, every bit: the incremental engine's class scores equal the
// reference engine's exactly, and its failure count equals a full rerun of the network with the
// flipped code. Chunks of 64 images, so that a change meets chunk borders too.
TEST(IncrementalGraph, EqualsReferenceAndFullRerunOnEverySiteAndBit) {
  for (const bool residual : {true, false}) {
    SCOPED_TRACE(name_of(residual));
    const TrainedGraph& t = trained(residual);
    ASSERT_GT(t.g->correct(), 50);
    EngineOptions eo;
    eo.chunk = 64;
    ReferenceEngine ref(*t.q, *t.g, FaultTarget::Activations, eo);
    IncrementalEngine inc(*t.q, *t.g, FaultTarget::Activations, eo);
    Rng rng(residual ? 27 : 28);
    SCOPED_TRACE("Rng seed " + std::to_string(residual ? 27 : 28) + " reproduces this");
    int64_t failing = 0, faults = 0;
    for (int s : t.net.sites()) {
      const int64_t n = t.net.shapes()[s].numel();
      for (int bit = 0; bit < t.q->formats().act[s].bits; ++bit)
        for (int k = 0; k < 2; ++k) {
          const Fault f{s, static_cast<int64_t>(rng.below(static_cast<uint64_t>(n))), bit};
          const auto want = ref.scores({f});
          const auto got = inc.scores({f});
          ASSERT_TRUE(torch::equal(got, want)) << describe(f);
          const int64_t fails = inc.failures({f});
          EXPECT_EQ(fails, full_rerun_failures(*t.q, *t.g, {f})) << describe(f);
          failing += fails > 0;
          ++faults;
        }
    }
    RecordProperty(name_of(residual) + "_failing_faults", std::to_string(failing));
    EXPECT_GT(failing, faults / 20) << "flips should change answers, or the test proves little";
  }
}

// The most sensitive neurons: each site's neuron with the largest golden code of the first
// images, its MSB and its sign bit's neighbour, where changes are largest and travel furthest.
TEST(IncrementalGraph, EqualsReferenceOnTheLargestCodes) {
  for (const bool residual : {true, false}) {
    SCOPED_TRACE(name_of(residual));
    const TrainedGraph& t = trained(residual);
    ReferenceEngine ref(*t.q, *t.g, FaultTarget::Activations);
    IncrementalEngine inc(*t.q, *t.g, FaultTarget::Activations);
    for (int s : t.net.sites())
      for (int64_t image = 0; image < 3; ++image)
        for (int bit : {6, 7}) {
          const int64_t idx = t.g->stored(s)[image].flatten().argmax().item<int64_t>();
          const Fault f{s, idx, bit};
          ASSERT_TRUE(torch::equal(inc.scores({f}), ref.scores({f}))) << describe(f);
        }
  }
}

// Exhaustive MSB campaigns over a few whole sites (an addition, a depthwise convolution, global
// average pooling): the campaign counts of
// the incremental engine equal the reference engine's fault set by fault set, and the cone engine
// (which falls back to the incremental engine on these graphs) gives them too.
TEST(IncrementalGraph, ExhaustiveCampaignsEqualTheReference) {
  for (const bool residual : {true, false}) {
    SCOPED_TRACE(name_of(residual));
    const TrainedGraph& t = trained(residual);
    CampaignOptions o;
    // residual: b.add (16x7x7, the sum of a branch and a projection shortcut), gap;
    // depthwise: dw2 (depthwise, stride 2, hardtanh), gap.
    o.sites = residual ? std::vector<int>{7, 8} : std::vector<int>{5, 7};
    const CampaignPlan plan(*t.q, o);
    ReferenceEngine ref(*t.q, *t.g, FaultTarget::Activations);
    IncrementalEngine inc(*t.q, *t.g, FaultTarget::Activations);
    ConeEngine cone(*t.q, *t.g, FaultTarget::Activations);
    RunOptions r;
    r.workers = 2;
    const auto want = run_campaign(plan, ref, t.g->correct(), r);
    const auto got = run_campaign(plan, inc, t.g->correct(), r);
    const auto via_cone = run_campaign(plan, cone, t.g->correct(), r);
    ASSERT_TRUE(want.complete());
    int64_t failing = 0;
    for (int64_t i = 0; i < plan.size(); ++i) {
      EXPECT_EQ(got.failures[i], want.failures[i]) << describe(plan.faults(i)[0]);
      EXPECT_EQ(via_cone.failures[i], want.failures[i]) << describe(plan.faults(i)[0]);
      failing += want.failures[i] > 0;
    }
    EXPECT_GT(failing, 0);
  }
}

// Several faults at once and weight faults go to the reference engine, which handles additions,
// groups and clamps: the incremental engine returns its scores.
TEST(IncrementalGraph, SeveralFaultsAndWeightFaultsGoToTheReference) {
  const TrainedGraph& t = trained(true);
  ReferenceEngine ref(*t.q, *t.g, FaultTarget::Activations);
  IncrementalEngine inc(*t.q, *t.g, FaultTarget::Activations);
  const std::vector<Fault> both{{0, 5, 7}, {3, 100, 6}};  // the stem and the addition it feeds
  EXPECT_TRUE(torch::equal(inc.scores(both), ref.scores(both)));
  EXPECT_EQ(inc.failures(both), full_rerun_failures(*t.q, *t.g, both));
  const TrainedGraph& d = trained(false);
  ReferenceEngine wref(*d.q, *d.g, FaultTarget::Weights);
  IncrementalEngine winc(*d.q, *d.g, FaultTarget::Weights);
  const std::vector<Fault> w{{2, 4, 7}};  // a depthwise weight
  EXPECT_TRUE(torch::equal(winc.scores(w), wref.scores(w)));
}

// forward_window over a range of channels equals those channels of the whole window: the
// depthwise convolution on one channel, a grouped range of the 1x1 convolution (one group: any
// output channels from every input channel), the addition on its own channels; a range that
// splits a group, or one of a fully-connected block, is refused.
TEST(IncrementalGraph, ChannelWindowsEqualTheWholeBlock) {
  const TrainedGraph& t = trained(false);
  const QuantizedNetwork& q = *t.q;
  const auto codes = [&](int j, int64_t c0, int64_t c1) {
    return t.g->codes(j, 0, 5).slice(1, c0, c1).slice(2, 2, 9).slice(3, 3, 10);
  };
  // Block 2, ir.depthwise (16 channels, 3x3, one per group): window rows/columns 2..8 read 7x7.
  const auto whole = q.forward_window(2, {codes(1, 0, 16)});
  for (int64_t c : {0, 5, 15})
    EXPECT_TRUE(torch::equal(q.forward_window(2, {codes(1, c, c + 1)}, {0, 0, 0, 0}, {c, c + 1}),
                             whole.slice(1, c, c + 1)))
        << "channel " << c;
  EXPECT_TRUE(torch::equal(q.forward_window(2, {codes(1, 3, 9)}, {0, 0, 0, 0}, {3, 9}),
                           whole.slice(1, 3, 9)));
  // Block 3, ir.project (1x1, one group): output channels 2..5 read every input channel.
  const auto project = q.forward_window(3, {codes(2, 0, 16)});
  EXPECT_TRUE(torch::equal(q.forward_window(3, {codes(2, 0, 16)}, {0, 0, 0, 0}, {2, 5}),
                           project.slice(1, 2, 5)));
  // Block 4, ir.add = stem + project.
  const auto add = q.forward_window(4, {codes(0, 0, 8), codes(3, 0, 8)});
  EXPECT_TRUE(torch::equal(
      q.forward_window(4, {codes(0, 6, 8), codes(3, 6, 8)}, {0, 0, 0, 0}, {6, 8}),
      add.slice(1, 6, 8)));
  // Errors: outside the block, or a fully-connected block.
  EXPECT_THROW(q.forward_window(2, {codes(1, 0, 1)}, {0, 0, 0, 0}, {16, 17}), Error);
  EXPECT_THROW(q.forward_window(8, {t.g->codes(7, 0, 5)}, {0, 0, 0, 0}, {0, 2}), Error);
}

// A saved residual model runs end to end in `flipguard inject`: exhaustive (the default cone
// engine, falling back to the incremental engine, gives the reference engine's rates file byte
// for byte), sampled and BER campaigns.
TEST(IncrementalGraph, InjectRunsOnASavedResidualModel) {
  const TrainedGraph& t = trained(true);
  TempDir d;
  const std::string model = d.file("residual.fgm");
  Model m;
  m.net = t.net;
  m.quant = t.q->formats();
  save_model(m, model);
  const std::string base = "inject --model " + model + " --data mnist --images 100 ";
  const Result cone = run(base + "--sites 7 --out " + d.file("cone"));
  ASSERT_EQ(cone.status, 0) << cone.output;
  const Result ref = run(base + "--sites 7 --engine reference --out " + d.file("ref"));
  ASSERT_EQ(ref.status, 0) << ref.output;
  const std::string rates = slurp(d.file("cone/rates_site7.csv"));
  EXPECT_FALSE(rates.empty());
  EXPECT_EQ(rates, slurp(d.file("ref/rates_site7.csv")));
  const auto s = nlohmann::json::parse(slurp(d.file("cone/summary.json")));
  EXPECT_EQ(s["fault_sets"], 16 * 7 * 7);
  EXPECT_GT(s["overall"]["worst_case"].get<double>(), 0.0);
  const Result sampled =
      run(base + "--campaign sampled --error 0.1 --out " + d.file("sampled"));
  ASSERT_EQ(sampled.status, 0) << sampled.output;
  const auto ss = nlohmann::json::parse(slurp(d.file("sampled/summary.json")));
  EXPECT_EQ(ss["campaign"], "sampled");
  const Result ber = run(base + "--campaign ber --ber 0.001 --runs 3 --out " + d.file("ber"));
  ASSERT_EQ(ber.status, 0) << ber.output;
  EXPECT_EQ(nlohmann::json::parse(slurp(d.file("ber/summary.json")))["campaign"], "ber");
}
