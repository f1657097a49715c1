// The flipguard program as a user runs it: its subcommands, options and errors (zoo, train,
// quantize, eval). The other subcommands have test_cli_<subcommand>.cpp files of their own.
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

TEST(Cli, ZooListsEveryArchitectureWithItsSites) {
  const Result r = run("zoo");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const auto& n : zoo_names()) EXPECT_TRUE(contains(r.output, n + ":")) << r.output;
  EXPECT_TRUE(contains(r.output, "site 3  gap      64x1x1")) << r.output;
}

TEST(Cli, ThreadsGoBeforeOrAfterTheSubcommand) {
  for (const char* args : {"--threads 1 zoo", "zoo --threads 1"}) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 0) << args << ": " << r.output;
    EXPECT_TRUE(contains(r.output, "mnist-cnn:")) << r.output;
  }
  const Result bad = run("zoo --threads 0");
  EXPECT_NE(bad.status, 0);
  EXPECT_TRUE(contains(bad.output, "--threads")) << bad.output;
}

TEST(Cli, UnknownArchitectureListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch lenet --data mnist --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "lenet")) << r.output;
  for (const auto& n : zoo_names()) EXPECT_TRUE(contains(r.output, n)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownDataSetListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data svhn --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "svhn")) << r.output;
  for (const char* n : {"mnist", "fashion-mnist", "cifar10"}) EXPECT_TRUE(contains(r.output, n)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownAugmentationListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data mnist --augment elastic --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "elastic")) << r.output;
  for (const auto& m : {"auto", "on", "shift", "affine", "off"})
    EXPECT_TRUE(contains(r.output, m)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownOptionListsTheValidOnes) {
  const Result r = run("eval --model x.fgm --data mnist --frobnicate 3");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--frobnicate")) << r.output;
  EXPECT_TRUE(contains(r.output, "--model")) << r.output;
  EXPECT_TRUE(contains(r.output, "--json")) << r.output;
}

TEST(Cli, UnknownSubcommandIsRejected) {
  const Result r = run("frobnicate");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "frobnicate")) << r.output;
}

TEST(Cli, MissingAndCorruptModelFilesGiveOneLineErrors) {
  TempDir d;
  Result r = run("eval --model " + d.file("missing.fgm") + " --data mnist");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "missing.fgm")) << r.output;

  std::ofstream(d.file("junk.fgm")) << "this is not a model";
  r = run("quantize --model " + d.file("junk.fgm") + " --data mnist --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "not a flipguard model")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
}

TEST(Cli, DataSetOfTheWrongShapeIsRejectedWithoutOutput) {
  TempDir d;
  save_model({build_zoo("cifar-cnn"), std::nullopt, {}}, d.file("c.fgm"));
  const Result r = run("quantize --model " + d.file("c.fgm") + " --data mnist --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "1x28x28")) << r.output;
  EXPECT_TRUE(contains(r.output, "3x32x32")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
}

TEST(Cli, MissingDataFolderIsNamed) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data mnist:" + d.file("nowhere") + " --out " +
                       d.file("m.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "nowhere")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("m.fgm")));
}

TEST(Cli, TrainQuantizeEvalEndToEndOnASmallSubset) {
  TempDir d;
  Result r = run("--threads 2 train --arch mnist-cnn-opt --data mnist --epochs 1 --limit 1024 --out " +
                 d.file("m.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("quantize --model " + d.file("m.fgm") + " --data mnist --calibration-images 200 --out " +
          d.file("q.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "block 0 conv0    act s8.")) << r.output;
  r = run("eval --model " + d.file("q.fgm") + " --data mnist --images 500 --json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "\"quantized\": true")) << r.output;
  EXPECT_TRUE(contains(r.output, "\"images\": 500")) << r.output;
  const Model q = load_model(d.file("q.fgm"));
  ASSERT_TRUE(q.quant.has_value());
  EXPECT_EQ(q.quant->act.size(), q.net.blocks.size());
}

// train --teacher: distillation from a model file; its temperature only with a teacher, and a
// teacher for other images is refused, all before anything is written.
TEST(Cli, TrainDistilsFromATeacherModel) {
  TempDir d;
  Result r = run("--threads 2 train --arch mnist-teacher --data mnist --epochs 1 --limit 512 --out " +
                 d.file("t.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("--threads 2 train --arch mnist-cnn --data mnist --epochs 1 --limit 512 --teacher " +
          d.file("t.fgm") + " --temperature 3 --out " + d.file("s.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const Model s = load_model(d.file("s.fgm"));
  EXPECT_EQ(s.net.arch, "mnist-cnn");
  EXPECT_EQ(s.meta.at("teacher"), d.file("t.fgm"));

  r = run("train --arch mnist-cnn --data mnist --temperature 3 --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--teacher")) << r.output;
  r = run("train --arch mnist-cnn --data mnist --teacher " + d.file("nowhere.fgm") + " --out " +
          d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "nowhere.fgm")) << r.output;
  r = run("train --arch mnist-cnn --data mnist --limit 64 --teacher " +
          std::string(FLIPGUARD_SOURCE_DIR) + "/models/cifar-cnn-cifar10.fgm --out " +
          d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "3x32x32")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("x.fgm")));
}

TEST(Cli, QuantizeNoRefineKeepsEachTensorsOwnFormat) {
  TempDir d;
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  const Result r = run("quantize --model " + float_model +
                       " --data mnist --calibration-images 100 --no-refine --out " + d.file("q.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const Model m = load_model(float_model);
  const Dataset calib = load_dataset(parse_data_spec("mnist"), Split::Train).head(100);
  QuantOptions o;
  o.refine = false;
  EXPECT_TRUE(load_model(d.file("q.fgm")).quant.value() == calibrate(m.net, calib.images, o));
  o.refine = true;
  const QuantFormats refined = calibrate(m.net, calib.images, o);
  EXPECT_FALSE(refined == calibrate(m.net, calib.images, QuantOptions{8, true, 100, -16, 30, false}))
      << "on this model the refinement moves a format, so the comparison above can fail";
}

TEST(Cli, EvalWritesThePredictionsOfTheFixedPointPass) {
  TempDir d;
  const Result r = run("eval --model " + kModel + " --data mnist --images 300 --json --predictions " +
                       d.file("top.npy"));
  ASSERT_EQ(r.status, 0) << r.output;
  const NpyArray top = read_npy(d.file("top.npy"));
  ASSERT_EQ(top.shape, (std::vector<int64_t>{300}));
  // The same classes as the library's fixed-point pass, image by image, and the reported
  // accuracy is theirs.
  const Model m = load_model(kModel);
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(300);
  const torch::Tensor expected = QuantizedNetwork(m.net, *m.quant).scores(test.images).argmax(1);
  int64_t correct = 0;
  for (int64_t i = 0; i < 300; ++i) {
    ASSERT_EQ(static_cast<int64_t>(top.data[i]), expected[i].item<int64_t>()) << "image " << i;
    correct += static_cast<int64_t>(top.data[i]) == test.labels[i].item<int64_t>();
  }
  const double accuracy = nlohmann::json::parse(r.output)["accuracy"];
  EXPECT_DOUBLE_EQ(accuracy, correct / 300.0);
}

TEST(Cli, EvalWritesTheClassScoresOfTheFixedPointAndTheFloatPass) {
  TempDir d;
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(200);
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  for (const std::string& model : {kModel, float_model}) {
    SCOPED_TRACE(model);
    const Result r = run("eval --model " + model + " --data mnist --images 200 --json --scores " +
                         d.file("scores.npy") + " --predictions " + d.file("top.npy"));
    ASSERT_EQ(r.status, 0) << r.output;
    const NpyArray scores = read_npy(d.file("scores.npy"));
    const NpyArray top = read_npy(d.file("top.npy"));
    ASSERT_EQ(scores.shape, (std::vector<int64_t>{200, 10}));
    // The fixed-point pass: its exact integer scores times their unit; the float pass: forward.
    const Model m = load_model(model);
    torch::Tensor expected;
    if (m.quant) {
      const QuantizedNetwork q(m.net, *m.quant);
      expected = q.scores(test.images) * q.score_scale();
    } else {
      torch::NoGradGuard no_grad;
      expected = m.net.forward(m.net.preprocess(test.images)).flatten(1).to(torch::kFloat64);
    }
    int64_t correct = 0;
    for (int64_t i = 0; i < 200; ++i) {
      int64_t best = 0;
      for (int64_t k = 0; k < 10; ++k) {
        // Exact for the integer pass; the float pass may round differently in other batches.
        if (m.quant)
          ASSERT_EQ(scores.data[i * 10 + k], expected[i][k].item<double>()) << "image " << i;
        else
          ASSERT_NEAR(scores.data[i * 10 + k], expected[i][k].item<double>(), 1e-4) << "image " << i;
        if (scores.data[i * 10 + k] > scores.data[i * 10 + best]) best = k;
      }
      ASSERT_EQ(static_cast<int64_t>(top.data[i]), best) << "image " << i;
      correct += best == test.labels[i].item<int64_t>();
    }
    const nlohmann::json j = nlohmann::json::parse(r.output);
    EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), correct / 200.0);
    EXPECT_EQ(j["scores"], d.file("scores.npy"));
  }
}
