// Resilience optimization of the network itself (section IV): the architectural optimization;
// range restriction of the activation sites.
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include "fault_fixtures.hpp"
#include "graph_fixtures.hpp"
#include "helpers.hpp"
#include "synthetic.hpp"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>

using namespace flipguard;
using namespace flipguard::test;

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

// --- Algorithm 1 ---------------------------------------------------------------------------

namespace {

struct Trained {
  Network net;
  QuantFormats formats;
  Dataset train, test;
};

const Trained& trained() {
  static const Trained t = [] {
    torch::set_num_threads(2);
    Trained r{build_zoo("mnist-cnn-opt", 3), {}, synthetic::brightness_levels(384, 1), synthetic::brightness_levels(200, 2)};
    TrainOptions o;
    o.epochs = 2;
    o.batch_size = 32;
    o.warmup_epochs = 0.2;
    o.log_every = 0;
    train_network(r.net, r.train, r.test, o, [](const std::string&) {});
    QuantOptions q;
    q.calibration_images = 100;
    q.refine = false;
    r.formats = calibrate(r.net, r.train.head(100).images, q);
    return r;
  }();
  return t;
}

FeatureOptions quick_options() {
  FeatureOptions o;
  o.relevance_images = 50;
  o.quant.calibration_images = 100;
  o.quant.refine = false;
  o.finetune.epochs = 1;
  o.finetune.batch_size = 32;
  o.finetune.lr = 0.001;
  o.finetune.warmup_epochs = 0;
  o.finetune.log_every = 0;
  return o;
}

}  // namespace

TEST(Features, AdjustNetworkAppliesEq6ToEveryReaderOfASiteAndNotToTheFirstLayer) {
  const Trained& t = trained();
  const QuantizedNetwork q(t.net, t.formats);
  const auto etas = site_etas(q, t.train.head(50).images, t.train.head(50).labels, {});
  // mnist-cnn-opt: sites 0, 1, 2 are each read by the next convolution; the last block is none.
  ASSERT_EQ(etas.size(), t.net.blocks.size());
  for (size_t b = 0; b + 1 < etas.size(); ++b) EXPECT_TRUE(etas[b].defined()) << b;
  EXPECT_FALSE(etas.back().defined());
  std::vector<int> changed;
  const Network adj = adjust_network(t.net, etas, &changed);
  EXPECT_EQ(changed, (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(torch::equal(adj.blocks[0].weight, t.net.blocks[0].weight));
  for (int b : changed) {
    EXPECT_TRUE(torch::equal(adj.blocks[b].weight,
                             adjust_weights(t.net.blocks[b].weight, etas[b - 1])));
    EXPECT_TRUE(torch::equal(adj.blocks[b].bias, t.net.blocks[b].bias));
  }
  // The input is untouched, and Fig. 5b's mean is the mean of the sites' normalized SDs.
  EXPECT_FALSE(torch::equal(adj.blocks[2].weight, t.net.blocks[2].weight));
  const double m = (normalized_sd(etas[0]) + normalized_sd(etas[1]) + normalized_sd(etas[2])) / 3;
  EXPECT_DOUBLE_EQ(mean_normalized_sd(etas), m);
  EXPECT_THROW(adjust_network(t.net, {etas[0]}, nullptr), Error);
}

TEST(Features, AlgorithmOneFineTunesBetweenAdjustmentsAndNotAfterTheLast) {
  const Trained& t = trained();
  FeatureOptions o = quick_options();
  o.iterations = 3;
  FeatureState start;
  start.net = t.net;
  start.formats = t.formats;
  std::vector<int> checkpoints;
  FeatureState mid;
  const FeatureState st = optimize_features(
      start, t.train, t.test, o, [](const std::string&) {},
      [&](const FeatureState& s) {
        checkpoints.push_back(s.done);
        if (s.done == 1) mid = s;
      });
  EXPECT_TRUE(st.finished);
  EXPECT_EQ(st.done, 3);
  EXPECT_EQ(checkpoints, (std::vector<int>{1, 2}));  // after each fine-tuning, none after the last
  ASSERT_EQ(st.history.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(st.history[i].iteration, i);
  EXPECT_LT(st.history[0].finetune_train_accuracy, 0);
  EXPECT_GE(st.history[1].finetune_train_accuracy, 0);
  EXPECT_GE(st.history[2].finetune_train_accuracy, 0);
  EXPECT_LT(st.history[3].finetune_train_accuracy, 0);
  // The history's accuracy is the model's: 8-bit, in the formats that come with it.
  EXPECT_EQ(st.history.back().quantized_accuracy,
            QuantizedNetwork(st.net, st.formats).accuracy(t.test.images, t.test.labels));
  // The spread of the criticality is smaller after the first adjustment than before.
  EXPECT_LT(st.history[1].mean_sd, st.history[0].mean_sd);
  // Resuming from the state after iteration 1 gives the same result as the whole run.
  const FeatureState resumed = optimize_features(mid, t.train, t.test, o, [](const std::string&) {});
  EXPECT_EQ(resumed.done, 3);
  for (size_t b = 0; b < st.net.blocks.size(); ++b)
    if (st.net.blocks[b].weighted())
      EXPECT_TRUE(torch::equal(resumed.net.blocks[b].weight, st.net.blocks[b].weight)) << b;
  EXPECT_TRUE(resumed.formats == st.formats);
}

TEST(Features, ADivergingFineTuningStopsWithAClearError) {
  // The rule alone: a fine-tuning may end at most kFinetuneCollapse below where it started.
  EXPECT_NO_THROW(check_finetuning(1, 0.8129, 0.9808, 0.002));  // MNIST, iteration 1
  EXPECT_NO_THROW(check_finetuning(4, 0.98, 0.98 - kFinetuneCollapse, 0.001));
  try {
    check_finetuning(1, 0.8129, 0.47, 0.005);  // mnist-cnn-opt at lr 0.005
    ADD_FAILURE() << "a collapse to 47 % passed";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* part : {"iteration 1", "diverged", "47.00%", "81.29%", "lower lr", "0.005"})
      EXPECT_NE(m.find(part), std::string::npos) << part << " not in: " << m;
  }
  // The whole algorithm: a learning rate far too high stops it in the first fine-tuning, before
  // any state is handed on to be checkpointed.
  const Trained& t = trained();
  FeatureOptions o = quick_options();
  o.iterations = 2;
  o.finetune.lr = 1e6;
  o.finetune.warmup_epochs = 0;
  FeatureState start;
  start.net = t.net;
  start.formats = t.formats;
  int calls = 0;
  try {
    optimize_features(start, t.train, t.test, o, [](const std::string&) {},
                      [&](const FeatureState&) { ++calls; });
    ADD_FAILURE() << "fine-tuning at lr 1e6 passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("diverged"), std::string::npos) << e.what();
  }
  EXPECT_EQ(calls, 0);
}

TEST(Features, UntilTheBaselineStopsAtTheFirstAdjustmentThatReachesIt) {
  const Trained& t = trained();
  FeatureOptions o = quick_options();
  o.iterations = 4;
  o.until_baseline = true;
  o.baseline = 0.0;  // every accuracy reaches it: the first adjustment is final
  FeatureState start;
  start.net = t.net;
  start.formats = t.formats;
  int calls = 0;
  const FeatureState st = optimize_features(start, t.train, t.test, o, [](const std::string&) {},
                                            [&](const FeatureState&) { ++calls; });
  EXPECT_EQ(st.done, 1);
  EXPECT_TRUE(st.reached);
  EXPECT_EQ(calls, 0);
  ASSERT_EQ(st.history.size(), 2u);
  EXPECT_LT(st.history[1].finetune_train_accuracy, 0);
  // An unreachable baseline runs every iteration and says so.
  o.baseline = 1.01;
  o.iterations = 2;
  const FeatureState all = optimize_features(start, t.train, t.test, o, [](const std::string&) {});
  EXPECT_EQ(all.done, 2);
  EXPECT_FALSE(all.reached);
  o.iterations = 0;
  EXPECT_THROW(optimize_features(start, t.train, t.test, o, [](const std::string&) {}), Error);
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
  const TempDir tmp("flipguard-ranges");
  const std::string file = tmp.file("restricted.fgm");
  save_model(Model{m.net, r, {}}, file);
  EXPECT_TRUE(load_model(file).quant.value() == r);
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

// --- a whole run: checkpoints, resume, the model file and Fig. 5 ---------------------------

namespace {

FeatureRunOptions quick_run(const TempDir& d) {
  FeatureRunOptions r;
  r.features = quick_options();
  r.features.iterations = 2;
  r.out = d.file("h.fgm");
  r.from = "in.fgm";
  r.data = "levels";
  r.command = "test";
  return r;
}

}  // namespace

TEST(FeatureRun, IterationJsonReadsBackAndSignatureIgnoresOnlyTheIterations) {
  FeatureIteration it;
  it.iteration = 3;
  it.quantized_accuracy = 0.5;
  it.float_accuracy = 0.75;
  it.mean_sd = 0.125;
  it.sites = {1, 4};
  it.site_sd = {0.25, 0.5};
  it.seconds = 2;
  for (double ft : {-1.0, 0.875}) {
    it.finetune_train_accuracy = ft;
    const nlohmann::json j = to_json(it);
    EXPECT_EQ(j.at("finetune_train_accuracy").is_null(), ft < 0);
    EXPECT_EQ(to_json(feature_iteration_from_json(j)), j);
  }
  const TempDir d;
  FeatureRunOptions a = quick_run(d), b = a;
  b.features.iterations = 7;
  EXPECT_EQ(features_signature(a), features_signature(b));
  for (auto change : std::vector<std::function<void(FeatureRunOptions&)>>{
           [](FeatureRunOptions& r) { r.features.finetune.lr *= 2; },
           [](FeatureRunOptions& r) { r.augment = "shift"; },
           [](FeatureRunOptions& r) { r.distill = true; },
           [](FeatureRunOptions& r) { r.features.until_baseline = true; },
           [](FeatureRunOptions& r) { r.test_images = 10; }}) {
    FeatureRunOptions c = a;
    change(c);
    EXPECT_NE(features_signature(a), features_signature(c)) << features_signature(c);
  }
  EXPECT_EQ(feature_report_dir("/x/y/h.fgm"), "/x/y/h.features");
}

TEST(FeatureRun, CheckpointReadsBackAndRefusesAnotherRun) {
  const Trained& t = trained();
  const TempDir d;
  FeatureState st;
  st.net = t.net;
  st.formats = t.formats;
  st.done = 1;
  st.history.resize(2);
  st.history[1].iteration = 1;
  st.history[1].finetune_train_accuracy = 0.5;
  save_feature_checkpoint(d.file("c.fgm"), st, 0.9, "sig", {{"kept", 1}});
  double baseline = 0;
  const FeatureState back = load_feature_checkpoint(d.file("c.fgm"), "sig", baseline);
  EXPECT_EQ(baseline, 0.9);
  EXPECT_EQ(back.done, 1);
  ASSERT_EQ(back.history.size(), 2u);
  EXPECT_EQ(to_json(back.history[1]), to_json(st.history[1]));
  EXPECT_TRUE(back.formats == st.formats);
  try {
    load_feature_checkpoint(d.file("c.fgm"), "other", baseline);
    ADD_FAILURE() << "another run's checkpoint was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("other options (sig)"), std::string::npos) << e.what();
  }
  save_model(Model{t.net, t.formats, {}}, d.file("plain.fgm"));
  EXPECT_THROW(load_feature_checkpoint(d.file("plain.fgm"), "sig", baseline), Error);
  // A state with a member missing or of another type: an Error naming it, not nlohmann's
  // exceptions (what fuzz_feature_checkpoint checks on mutated checkpoints).
  Model damaged = load_model(d.file("c.fgm"));
  damaged.meta["features_state"]["done"] = 1e300;
  save_model(damaged, d.file("damaged.fgm"));
  const std::string message = error_of([&] { load_feature_checkpoint(d.file("damaged.fgm"), "sig", baseline); });
  EXPECT_NE(message.find("done is 1e+300, expected a whole number"), std::string::npos) << message;
  damaged.meta["features_state"].erase("done");
  damaged.meta["features_state"]["signature"] = 7;
  save_model(damaged, d.file("damaged.fgm"));
  EXPECT_THROW(load_feature_checkpoint(d.file("damaged.fgm"), "sig", baseline), Error);
}

TEST(FeatureRun, WritesTheModelTheReportAndRemovesTheCheckpoint) {
  const Trained& t = trained();
  const TempDir d;
  const Model in{t.net, t.formats, {{"origin", "test"}}};
  FeatureRunOptions r = quick_run(d);
  const FeatureRun run = harden_features(in, t.train, t.test, r, [](const std::string&) {});
  EXPECT_EQ(run.state.done, 2);
  EXPECT_EQ(run.checkpoint, d.file("h.fgm.ckpt"));
  EXPECT_FALSE(std::filesystem::exists(run.checkpoint));
  EXPECT_EQ(run.report_dir, d.file("h.features"));
  const Model out = load_model(r.out);
  EXPECT_EQ(out.meta.at("origin"), "test");
  EXPECT_EQ(out.meta.at("harden"), run.summary);
  EXPECT_EQ(run.summary.at("iterations"), 2);
  EXPECT_EQ(run.summary.at("data"), "levels");
  EXPECT_EQ(run.summary.at("finetune").at("target"), "labels");
  EXPECT_EQ(run.summary.at("history").size(), 3u);
  EXPECT_TRUE(out.quant && *out.quant == run.state.formats);
  const nlohmann::json rep = nlohmann::json::parse(read_file(d.file("h.features/features.json")));
  EXPECT_EQ(rep.at("model"), r.out);
  EXPECT_TRUE(std::filesystem::exists(d.file("h.features/fig5a_accuracy.gp")));
  // Resuming needs a checkpoint with fewer iterations than asked for, of the same options.
  save_feature_checkpoint(run.checkpoint, run.state, run.baseline, features_signature(r), {});
  r.resume = true;
  EXPECT_THROW(harden_features(in, t.train, t.test, r, [](const std::string&) {}), Error);
  r.features.iterations = 3;
  r.features.finetune.lr = 0.002;
  EXPECT_THROW(harden_features(in, t.train, t.test, r, [](const std::string&) {}), Error);
  EXPECT_THROW(harden_features(in, Dataset{}, t.test, quick_run(d), [](const std::string&) {}),
               Error);
}

TEST(FeatureRun, Fig5PlotsHaveAPointPerIteration) {
  std::vector<FeatureIteration> h(3);
  for (int i = 0; i < 3; ++i) {
    h[i].iteration = i;
    h[i].quantized_accuracy = 0.5 + 0.1 * i;
    h[i].mean_sd = 1.0 / (i + 1);
  }
  const Plot a = feature_accuracy_plot(h, 0.9);
  ASSERT_EQ(a.series.size(), 2u);
  EXPECT_EQ(a.series[0].y, (std::vector<double>{50, 60, 70}));
  EXPECT_EQ(a.series[1].y, (std::vector<double>{90, 90, 90}));
  const Plot b = feature_spread_plot(h);
  ASSERT_EQ(b.series.size(), 1u);
  EXPECT_EQ(b.series[0].y, (std::vector<double>{1, 0.5, 1.0 / 3}));
}

TEST(ArchitectureRun, RecordsTheChangeAndReQuantizesAQuantizedModel) {
  const Trained& t = trained();
  const Model in{t.net, t.formats, {}};
  ArchitectureRunOptions o;
  o.check_images = 20;
  o.from = "in.fgm";
  EXPECT_THROW(harden_architecture(in, Dataset{}, t.test, o), Error);
  const ArchitectureRun run = harden_architecture(in, t.train, t.test, o);
  EXPECT_EQ(run.checked_images, 20);
  EXPECT_LT(run.max_difference, 1e-3);
  EXPECT_EQ(run.model.meta.at("harden").at("method"), "architecture");
  EXPECT_EQ(run.model.meta.at("harden").at("from"), "in.fgm");
  EXPECT_EQ(run.model.meta.at("harden").at("max_float_score_difference"), run.max_difference);
  ASSERT_TRUE(run.requantized && run.model.quant);
  EXPECT_EQ(run.requantized->bits, t.formats.input.bits);
  EXPECT_TRUE(run.model.meta.contains("quantized_test_accuracy"));
  // Without test images nothing is measured, and a float model needs no training images.
  const ArchitectureRun plain = harden_architecture(Model{t.net, std::nullopt, {}}, {}, {}, o);
  EXPECT_EQ(plain.checked_images, 0);
  EXPECT_FALSE(plain.model.quant);
  EXPECT_FALSE(plain.model.meta.contains("float_test_accuracy"));
}

TEST(RangesRun, RestrictsEverySiteAndKeepsThePreviousHardening) {
  const Trained& t = trained();
  const Model in{t.net, t.formats, {{"harden", {{"method", "features"}}}}};
  EXPECT_THROW(harden_ranges(Model{t.net, std::nullopt, {}}, t.train, t.test, "f", "c"), Error);
  const RangesRun run = harden_ranges(in, t.train.head(100), t.test, "in.fgm", "cmd");
  const nlohmann::json& h = run.model.meta.at("harden");
  EXPECT_EQ(h.at("method"), "ranges");
  EXPECT_EQ(h.at("previous").at("method"), "features");
  EXPECT_EQ(h.at("range_images"), 100);
  EXPECT_EQ(h.at("sites").size(), t.net.sites().size());
  EXPECT_EQ(run.model.meta.at("quantized_test_accuracy"), run.after);
  for (int b : t.net.sites()) EXPECT_TRUE(run.model.quant->act[b].restricted) << b;
}

// ---- Residual additions, grouped convolutions and clamps (issue 27) ------------------------

namespace {

torch::Tensor f64(std::vector<double> v, std::vector<int64_t> shape) {
  return torch::tensor(v, torch::kFloat64).view(shape);
}

}  // namespace

// Depthwise, K = C = 2, 1x1 weights (1, 2), η = (1, 3): factors Σ η / (C·η_c) = (2, 2/3), each
// output scaled by its own input feature's: (2, 4/3). Two groups of C = 4 features, K = 2,
// weights [[1, 1], [1, 1]], η = (1, 1, 2, 4): factors (2, 2, 1, 0.5) give [[2, 2], [1, 0.5]].
// As for a dense reader, eq. 5 on the adjusted weights gives every feature the mean η.
TEST(Features, Eq6OnAGroupedConvolutionScalesEachFeatureInItsGroup) {
  EXPECT_TRUE(torch::allclose(adjust_weights(f64({1, 2}, {2, 1, 1, 1}), f64({1, 3}, {2}), 2),
                              f64({2, 4.0 / 3}, {2, 1, 1, 1})));
  EXPECT_TRUE(torch::allclose(
      adjust_weights(f64({1, 1, 1, 1}, {2, 2, 1, 1}), f64({1, 1, 2, 4}, {4}), 2),
      f64({2, 2, 1, 0.5}, {2, 2, 1, 1})));
  // 3 groups of a 3x3 convolution (6 features, 9 outputs): the dense form with zeros outside the
  // groups is adjusted alike, and eq. 5 on the result is flat.
  auto gen = at::detail::createCPUGenerator(11);
  const auto w = torch::randn({9, 2, 3, 3}, gen, torch::kFloat64);
  auto dense = torch::zeros({9, 6, 3, 3}, torch::kFloat64);
  for (int64_t k = 0; k < 9; ++k) dense[k].slice(0, (k / 3) * 2, (k / 3) * 2 + 2).copy_(w[k]);
  const auto rho = torch::rand({9}, gen, torch::kFloat64);
  const auto eta = feature_criticality(w, rho, 3);
  const auto adjusted = adjust_weights(w, eta, 3);
  const auto dense_adjusted = adjust_weights(dense, eta);
  for (int64_t k = 0; k < 9; ++k)
    EXPECT_TRUE(torch::allclose(adjusted[k], dense_adjusted[k].slice(0, (k / 3) * 2, (k / 3) * 2 + 2)));
  const auto after = feature_criticality(adjusted, rho, 3);
  EXPECT_TRUE(torch::allclose(after, torch::full({6}, eta.mean().item<double>(), torch::kFloat64)))
      << after;
  EXPECT_THROW(adjust_weights(w, eta, 2), Error);                  // 2 groups do not divide 9
  EXPECT_THROW(adjust_weights(w, eta.slice(0, 0, 4), 3), Error);  // 4 features, not 3 x 2
}

// Eq. 6 cannot scale a feature's outgoing weights where the feature also flows, unweighted,
// through an identity shortcut to an addition: those sites keep their readers' weights. In
// residual_graph() the stem is read by a.conv1 and a.add; a.add (block 3) by b.conv1 and the
// projection shortcut b.shortcut, both weighted, which eq. 6 adjusts. In depthwise_graph() the
// stem is read by the expansion and ir.add; the depthwise readers get eq. 6 by their groups.
TEST(Features, ShortcutSitesKeepTheirReadersWeights) {
  auto gen = at::detail::createCPUGenerator(2);
  auto random_etas = [&gen](const Network& net) {
    std::vector<torch::Tensor> etas(net.blocks.size());
    const auto shapes = net.shapes();
    for (int s : net.sites())
      etas[s] = torch::rand({shapes[s].c}, gen, torch::kFloat64) + 0.1;
    return etas;
  };
  const Network res = residual_graph();
  EXPECT_EQ(shortcut_sites(res), std::vector<int>{0});
  auto etas = random_etas(res);
  std::vector<int> changed;
  Network adj = adjust_network(res, etas, &changed);
  EXPECT_EQ(changed, (std::vector<int>{2, 4, 5, 6, 9}));
  EXPECT_TRUE(torch::equal(adj.blocks[1].weight, res.blocks[1].weight)) << "a.conv1 reads site 0";
  EXPECT_TRUE(torch::equal(adj.blocks[6].weight, adjust_weights(res.blocks[6].weight, etas[3])));

  const Network dw = depthwise_graph();
  EXPECT_EQ(shortcut_sites(dw), std::vector<int>{0});
  etas = random_etas(dw);
  adj = adjust_network(dw, etas, &changed);
  EXPECT_EQ(changed, (std::vector<int>{2, 3, 5, 6, 8}));
  EXPECT_TRUE(torch::equal(adj.blocks[1].weight, dw.blocks[1].weight));
  EXPECT_TRUE(torch::equal(adj.blocks[2].weight, adjust_weights(dw.blocks[2].weight, etas[1], 16)));
  EXPECT_TRUE(torch::equal(adj.blocks[5].weight, adjust_weights(dw.blocks[5].weight, etas[4], 8)));
  // The networks without additions have none.
  EXPECT_TRUE(shortcut_sites(build_zoo("cifar-cnn", 1)).empty());
  // In cifar-resnet20 every unit with an identity shortcut has one: the stem and the additions
  // that an identity unit reads (7 of 9 units; the first of stages 2 and 3 project).
  const Network r20 = build_zoo("cifar-resnet20", 1);
  const auto sc = shortcut_sites(r20);
  EXPECT_EQ(sc.size(), 7u);
  for (int s : sc) EXPECT_TRUE(s == 0 || r20.blocks[s].op == Op::Add) << s;
}

// Range restriction on every site of the depthwise network: the additions too, and each clamped
// site within its clamp's codes (ReLU6: [0, round(6·2^f)], hardtanh(-1, 1): [-2^f, 2^f]).
TEST(Ranges, AdditionAndClampedSitesAreRestrictedWithinTheClamp) {
  TrainedGraph t(depthwise_graph(), 60);
  const Dataset d = load_dataset(parse_data_spec("mnist"), Split::Train).head(200);
  const QuantFormats r = restrict_ranges(t.net, t.q->formats(), d.images, 64);
  const QuantizedNetwork restricted(t.net, r);
  const auto x = t.q->quantize_input(d.images);
  const auto a = t.q->forward_all(x), b = restricted.forward_all(x);
  for (int s : t.net.sites()) {
    const FixedPoint& f = r.act[s];
    const Block& blk = t.net.blocks[s];
    ASSERT_TRUE(f.restricted) << s;
    EXPECT_EQ(f.range_lo, static_cast<int64_t>(a[s].min().item<double>())) << s;
    EXPECT_EQ(f.range_hi, static_cast<int64_t>(a[s].max().item<double>())) << s;
    EXPECT_TRUE(a[s].equal(b[s])) << s;
    if (blk.activated()) {
      EXPECT_GE(f.range_lo, std::floor(std::ldexp(blk.act_lo(), f.frac) + 0.5)) << s;
      if (blk.clamps())
        EXPECT_LE(f.range_hi, std::floor(std::ldexp(blk.act_hi(), f.frac) + 0.5)) << s;
    }
  }
  EXPECT_LT(r.act[4].range_lo, 0) << "the addition without ReLU holds negative values";
  EXPECT_GE(r.act[5].range_lo, -(int64_t{1} << r.act[5].frac)) << "hardtanh(-1, 1)";
}

// The bottleneck rule on the residual networks: cifar-resnet20's sites are 16,384 (stem, stage
// 1), 8,192 (stage 2) and 4,096 (stage 3) neurons, median 8,192; its 64x1x1 global average
// pooling is the one bottleneck, read by the fully-connected layer alone, and moves behind it
// (the site is then the last addition, 64x8x8). depthwise_graph()'s 16x1x1 pooling likewise
// (median 1,568). A clamp on the reader does not commute with the average: refused.
TEST(Architecture, ResidualAndDepthwiseNetworks) {
  const Network r20 = with_bias(build_zoo("cifar-resnet20", 5));
  ArchitectureReport report;
  const Network opt = optimize_architecture(r20, report);
  ASSERT_EQ(report.bottlenecks.size(), 1u);
  EXPECT_EQ(report.bottlenecks[0].name, "gap");
  EXPECT_EQ(report.bottlenecks[0].shape, (Shape{64, 1, 1}));
  EXPECT_EQ(report.bottlenecks[0].median_neurons, 8192);
  EXPECT_TRUE(report.bottlenecks[0].fixed) << report.bottlenecks[0].action;
  EXPECT_EQ(opt.arch, "cifar-resnet20-opt");
  EXPECT_EQ(opt.blocks.size(), r20.blocks.size() - 1);
  EXPECT_EQ(opt.blocks.back().op, Op::Conv);
  EXPECT_EQ(opt.blocks.back().post.kind, PoolKind::GlobalAvg);
  EXPECT_EQ(opt.blocks.back().inputs, r20.blocks[r20.blocks.size() - 2].inputs);
  expect_same_function(r20, opt);
  EXPECT_TRUE(find_bottlenecks(opt).empty());

  const Network dw = with_bias(depthwise_graph());
  const Network dw_opt = optimize_architecture(dw, report);
  ASSERT_EQ(report.bottlenecks.size(), 1u);
  EXPECT_EQ(report.bottlenecks[0].median_neurons, 1568);
  EXPECT_EQ(report.moved, 1);
  expect_same_function(dw, dw_opt);

  Network clamped = build_zoo("cifar-resnet20", 5);
  clamped.blocks.back().clamp_max = 10;
  clamped.validate();
  optimize_architecture(clamped, report);
  EXPECT_EQ(report.moved, 0);
  EXPECT_NE(report.bottlenecks[0].action.find("has a clamp"), std::string::npos)
      << report.bottlenecks[0].action;
}

// The relevance and hardening commands end to end on a trained, quantized residual model file.
TEST(ResidualModel, AnalyzeAndEveryHardeningRunOnIt) {
  const TempDir d("flipguard-residual");
  const std::string model = d.file("res.fgm"), float_model = d.file("res-float.fgm");
  {
    TrainedGraph t(residual_graph(), 100);
    save_model(Model{t.net, t.q->formats(), {}}, model);
    save_model(Model{t.net, std::nullopt, nlohmann::json::object()}, float_model);
  }
  const Model in = load_model(model);
  // analyze: every site has η; the stem's comes from a.conv1 and, through the addition, from
  // the addition's readers; a.conv2, read by the addition alone, takes the addition's η.
  Result r = run("analyze --model " + model + " --data mnist --images 40 --out " + d.file("a"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(slurp(d.file("a/criticality.json")));
  ASSERT_EQ(j["sites"].size(), 9u);
  for (const auto& s : j["sites"]) EXPECT_TRUE(s["eta"].is_array()) << s["name"];
  EXPECT_EQ(j["sites"][0]["readers"], nlohmann::json({"a.conv1", "a.add"}));
  EXPECT_EQ(j["sites"][0]["criticality_from"],
            nlohmann::json({"a.conv1", "b.conv1", "b.shortcut"}));
  EXPECT_EQ(j["sites"][2]["eta"], j["sites"][3]["eta"]);

  // ranges: every site restricted, the additions too.
  r = run("harden --method ranges --model " + model +
          " --data mnist --range-images 300 --test-images 100 --out " + d.file("r.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const Model ranged = load_model(d.file("r.fgm"));
  for (int s : in.net.sites()) EXPECT_TRUE(ranged.quant->act[s].restricted) << s;
  EXPECT_EQ(ranged.quant->act[3].range_lo, 0) << "a.add has a ReLU";

  // features, one iteration (no fine-tuning after the last adjustment): the stem's reader keeps
  // its weights, the others are adjusted.
  r = run("harden --method features --model " + model +
          " --data mnist --iterations 1 --limit 300 --relevance-images 40 "
          "--calibration-images 100 --no-refine --test-images 100 --out " + d.file("f.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "eq. 6 leaves the readers of site 0 ('stem')")) << r.output;
  const Model feat = load_model(d.file("f.fgm"));
  EXPECT_EQ(feat.meta["harden"]["shortcut_sites_not_adjusted"], nlohmann::json({0}));
  EXPECT_TRUE(torch::equal(feat.net.blocks[1].weight, in.net.blocks[1].weight));
  EXPECT_FALSE(torch::equal(feat.net.blocks[2].weight, in.net.blocks[2].weight));
  EXPECT_FALSE(torch::equal(feat.net.blocks[6].weight, in.net.blocks[6].weight));

  // architecture (on the float model: re-quantizing measures the whole test set, and
  // ArchitectureRun.* tests that): the 16x1x1 pooling (median site 784 neurons) moves behind the
  // classifier, the float function unchanged.
  r = run("harden --method architecture --model " + float_model + " --out " + d.file("o.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "bottleneck: block 8 'gap' 16x1x1 (16 neurons, median site 784): moved"))
      << r.output;
  const Model opt = load_model(d.file("o.fgm"));
  EXPECT_EQ(opt.net.arch, "test-residual-opt");
  expect_same_function(in.net, opt.net);
}
