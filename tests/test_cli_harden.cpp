// flipguard harden: the architectural, feature and range optimizations from the command line.
#include <flipguard/data.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/zoo.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

// harden --method architecture on the trained mnist-cnn: the bottleneck is reported and moved,
// the float scores agree; bad requests give a clear error and no output file.
TEST(Harden, ArchitectureMovesTheBottleneckAndRejectsBadRequests) {
  TempDir d;
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  Result r = run("harden --method architecture --model " + float_model +
                 " --data mnist --check-images 200 --out " + d.file("opt.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "bottleneck: block 3 'gap' 64x1x1 (64 neurons, median site 12544): moved"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "float test accuracy 98.25%")) << r.output;
  const Model m = load_model(d.file("opt.fgm"));
  EXPECT_EQ(m.net.arch, "mnist-cnn-opt");
  EXPECT_FALSE(m.quant.has_value());
  EXPECT_EQ(m.meta["harden"]["moved"], 1);
  EXPECT_LT(m.meta["harden"]["max_float_score_difference"].get<double>(), 1e-4);
  // Nothing to do on the optimized model: written unchanged, and it says so.
  r = run("harden --model " + d.file("opt.fgm") + " --out " + d.file("again.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "no bottleneck site")) << r.output;
  EXPECT_TRUE(contains(r.output, "0 poolings moved")) << r.output;
  // A quantized model needs data to choose its new formats.
  r = run("harden --model " + kModel + " --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--data is needed")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
  r = run("harden --method magic --model " + float_model + " --out " + d.file("m.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "architecture")) << r.output;
  r = run("harden --bottleneck-ratio 2 --model " + float_model + " --out " + d.file("m.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_FALSE(fs::exists(d.file("m.fgm")));
}

// harden --method features on the trained mnist-cnn-opt, shortened (500 training images,
// 100 of them for the calibration, 2 iterations, accuracies on 2,000 test images): the model, features.json and the Fig. 5 figures; an interrupted run resumes
// from its checkpoint; bad requests give a clear error and no output file.
TEST(Harden, FeaturesWritesTheModelTheHistoryAndTheFigures) {
  TempDir d;
  const std::string model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-opt-mnist-q8.fgm";
  const std::string common = "harden --method features --model " + model +
                             " --data mnist --limit 500 --relevance-images 50 --calibration-images 100 "
                             "--test-images 2000 --threads 2 ";
  Result r = run(common + "--iterations 2 --out " + d.file("f.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "float baseline 97.65% on 2000 test images")) << r.output;
  const Model m = load_model(d.file("f.fgm"));
  ASSERT_TRUE(m.quant.has_value());
  EXPECT_EQ(m.net.arch, "mnist-cnn-opt");
  const auto j = nlohmann::json::parse(slurp(d.file("f.features/features.json")));
  EXPECT_EQ(j["method"], "features");
  EXPECT_EQ(j["iterations"], 2);
  EXPECT_EQ(j["train_images"], 500);
  ASSERT_EQ(j["history"].size(), 3u);
  EXPECT_TRUE(j["history"][2]["finetune_train_accuracy"].is_null());
  EXPECT_FALSE(j["history"][1]["finetune_train_accuracy"].is_null());
  EXPECT_EQ(j["finetune"]["target"], "labels");  // the paper's fine-tuning by default
  EXPECT_TRUE(j["finetune"]["temperature"].is_null());
  EXPECT_EQ(j["test_images"], 2000);
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(2000);
  EXPECT_DOUBLE_EQ(j["float_baseline"].get<double>(),
                   float_accuracy(load_model(model).net, test.images, test.labels));
  EXPECT_EQ(j["quantized_accuracy_after"], m.meta["quantized_test_accuracy"]);
  EXPECT_LT(j["mean_sd_after"].get<double>(), j["mean_sd_before"].get<double>());
  for (const char* f : {"fig5a_accuracy.svg", "fig5a_accuracy.gp", "fig5b_criticality_sd.svg",
                        "fig5b_criticality_sd.gp"})
    EXPECT_TRUE(fs::exists(d.file(std::string("f.features/") + f))) << f;
  EXPECT_FALSE(fs::exists(d.file("f.fgm.ckpt"))) << "the checkpoint is removed when done";

  // Killed after its first fine-tuning and resumed, the same run makes the same model.
  const std::string ckpt = d.file("c.ckpt");
  ASSERT_TRUE(kill_once_written(common + "--iterations 2 --checkpoint " + ckpt + " --out " +
                                    d.file("g.fgm"), ckpt));
  ASSERT_FALSE(fs::exists(d.file("g.fgm")));
  r = run(common + "--iterations 2 --resume --checkpoint " + ckpt + " --lr 0.5 --out " + d.file("g.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "other options")) << r.output;
  r = run(common + "--iterations 2 --resume --checkpoint " + ckpt + " --out " + d.file("g.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "resumed from")) << r.output;
  const Model g = load_model(d.file("g.fgm"));
  ASSERT_TRUE(g.quant.has_value());
  EXPECT_TRUE(*g.quant == *m.quant);
  for (size_t b = 0; b < m.net.blocks.size(); ++b)
    if (m.net.blocks[b].weighted())
      EXPECT_TRUE(torch::equal(g.net.blocks[b].weight, m.net.blocks[b].weight)) << b;
  EXPECT_FALSE(fs::exists(ckpt)) << "the checkpoint is removed when done";

  // Short of --until-accuracy after 2 iterations (2 fine-tunings on 500 images do not reach the
  // float baseline), the checkpoint stays, and a run with more iterations continues from it: the
  // same model as a run of 3 iterations from the start.
  ASSERT_LT(j["quantized_accuracy_after"].get<double>(), j["float_baseline"].get<double>());
  const std::string until = common + "--until-accuracy float-baseline ";
  r = run(until + "--iterations 2 --out " + d.file("h.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "not reached in 2 iterations; raise --iterations (with --resume"))
      << r.output;
  ASSERT_TRUE(fs::exists(d.file("h.fgm.ckpt"))) << "kept for a longer run";
  r = run(until + "--iterations 3 --resume --out " + d.file("h.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "resumed from " + d.file("h.fgm.ckpt") + " after iteration 1"))
      << r.output;
  r = run(until + "--iterations 3 --out " + d.file("k.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto hj = nlohmann::json::parse(slurp(d.file("h.features/features.json")));
  const auto kj = nlohmann::json::parse(slurp(d.file("k.features/features.json")));
  ASSERT_EQ(hj["history"].size(), kj["history"].size());
  for (size_t t = 0; t < kj["history"].size(); ++t)
    EXPECT_EQ(hj["history"][t]["quantized_accuracy"], kj["history"][t]["quantized_accuracy"]) << t;
  const Model h = load_model(d.file("h.fgm")), k = load_model(d.file("k.fgm"));
  EXPECT_TRUE(*h.quant == *k.quant);
  for (size_t b = 0; b < k.net.blocks.size(); ++b)
    if (k.net.blocks[b].weighted())
      EXPECT_TRUE(torch::equal(h.net.blocks[b].weight, k.net.blocks[b].weight)) << b;
  EXPECT_EQ(fs::exists(d.file("h.fgm.ckpt")), !kj["reached_baseline"].get<bool>())
      << "removed once the baseline is reached";

  r = run("harden --method features --model " + model + " --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--method features needs --data")) << r.output;
  r = run(common + "--iterations 0 --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 2);
  r = run(common + "--until-accuracy sometime --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "float-baseline")) << r.output;
  r = run(common + "--temperature 4 --out " + d.file("x.fgm"));  // labels: no temperature
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--temperature 4 is the distillation temperature")) << r.output;
  EXPECT_TRUE(contains(r.output, "--finetune-target labels")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("x.fgm")));
}

TEST(Harden, RangesRestrictEverySiteAndRefuseAFloatModel) {
  TempDir d;
  Result r = run("harden --method ranges --model " + kModel + " --data mnist --range-images 300"
                 " --test-images 500 --out " + d.file("r.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "site 0 ")) << r.output;
  EXPECT_TRUE(contains(r.output, "with the ranges (500 test images; ranges from 300 training")) << r.output;
  const Model m = load_model(d.file("r.fgm"));
  for (int s : m.net.sites()) EXPECT_TRUE(m.quant->act[s].restricted) << s;
  EXPECT_EQ(m.quant->act[0].range_lo, 0);  // after a ReLU
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  r = run("harden --method ranges --model " + float_model + " --data mnist --out " + d.file("f.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "quantize it first")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("f.fgm")));
}
