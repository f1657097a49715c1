// flipguard reproduce: the studies of the paper, stage by stage, kept and resumed.
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

// The ILSVRC form of the study (V-E2) end to end, on SqueezeNet 1.1's layout in miniature (traced
// by PyTorch here, tests/torchscript/make_models.py) and a 36-image sample of 3 classes:
// import, 8 bits, Algorithm 1, ranges, MSB campaigns limited to the most critical feature maps,
// bit error rates; no architectural optimization.
TEST(Reproduce, ImagenetSampleStudyFromATorchScriptModule) {
  TempDir d;
  fs::create_directories(d.file("modules"));
  Result r = run_shell("/usr/bin/python3 " + std::string(FLIPGUARD_SOURCE_DIR) +
                       "/tests/torchscript/make_models.py " + d.file("modules"));
  ASSERT_EQ(r.status, 0) << "make_models.py failed (python3-torch missing? ./run setup installs it): "
                         << r.output;
  // Classes told apart by colour, so that fine-tuning has something to learn.
  cv::RNG rng(5);
  for (int c = 0; c < 3; ++c) {
    const std::string wnid = "n0" + std::to_string(c);
    fs::create_directories(d.file("data/imagenet/" + wnid));
    for (int i = 0; i < 12; ++i) {
      cv::Mat img(48 + 4 * i, 64, CV_8UC3);
      rng.fill(img, cv::RNG::UNIFORM, 0, 120);
      img += cv::Scalar(c == 0 ? 120 : 0, c == 1 ? 120 : 0, c == 2 ? 120 : 0);
      ASSERT_TRUE(cv::imwrite(d.file("data/imagenet/" + wnid + "/" + std::to_string(i) + ".png"), img));
    }
  }
  const std::string out = d.file("study");
  const std::string args = "reproduce --benchmark imagenet-sample --torchscript " +
                           d.file("modules/tiny_fire_traced.pt") + " --out " + out +
                           " --top-features 2 --positions 5 --ber-images 36 --runs 2"
                           " --iterations 2 --until-accuracy '' --lr 0.01 --batch-size 12"
                           " --relevance-images 12 --calibration-images 12 --range-images 36"
                           " --threads 2";
  r = run_shell("FLIPGUARD_DATA_DIR=" + d.file("data") + " " + FLIPGUARD_BINARY + " " + args);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(slurp(out + "/results.json"));
  EXPECT_EQ(j["benchmark"], "imagenet-sample");
  EXPECT_EQ(j["base"], "original");
  EXPECT_FALSE(j.contains("architecture_optimization"));
  EXPECT_FALSE(j["models"].contains("architecture"));
  EXPECT_TRUE(j.contains("limitation"));
  // The imported network, quantized without refinement: its float accuracy is the module's.
  const Model original = load_model(out + "/original.fgm");
  ASSERT_TRUE(original.quant.has_value());
  EXPECT_EQ(original.net.blocks.size(), load_model(out + "/float.fgm").net.blocks.size());
  for (const std::string s : {"original", "features", "ranges", "features_ranges"}) {
    const auto c = nlohmann::json::parse(slurp(out + "/campaigns/" + s + "-msb/summary.json"));
    EXPECT_EQ(j["exhaustive"][s]["worst_case"], c["overall"]["worst_case"]) << s;
    // 2 maps x 5 positions, the model's own most critical maps.
    EXPECT_EQ(c["overall"]["faults"], 10) << s;
    EXPECT_EQ(c["golden"]["images"], 36);
    const auto b = nlohmann::json::parse(slurp(out + "/campaigns/" + s + "-ber/summary.json"));
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(j["ber"][s][i], b["ber"][i]["mean"]) << s << i;
  }
  const double w0 = j["exhaustive"]["original"]["worst_case"], w2 = j["exhaustive"]["features"]["worst_case"];
  if (w0 > 0)
    EXPECT_DOUBLE_EQ(j["feature_optimization"]["worst_case_reduction"].get<double>(), 1 - w2 / w0);
  EXPECT_EQ(j["feature_optimization"]["iterations"], 2);
  EXPECT_EQ(load_model(out + "/ranges.fgm").meta["harden"]["from"], out + "/original.fgm");
  EXPECT_TRUE(j["ber"]["mean_relative_reduction"].contains("ranges_vs_original"));
  EXPECT_TRUE(j["ber"]["mean_relative_reduction"].contains("features_ranges_vs_original"));
  // import, quantize, features, 2 x ranges, 4 x 2 campaigns
  EXPECT_EQ(j["commands"].size(), 13u);
  bool limited = false;
  for (const auto& c : j["commands"])
    limited |= contains(c["command"].get<std::string>(), "--top-features 2 --positions 5");
  EXPECT_TRUE(limited);
  // Algorithm 1 fine-tunes by distillation from the original model on the sample (auto).
  const auto feat = nlohmann::json::parse(slurp(out + "/features/features.json"));
  EXPECT_EQ(feat["finetune"]["target"], "teacher");
  EXPECT_EQ(feat["finetune"]["temperature"], 1.0);
  for (const char* f : {"fig6_features_histogram.svg", "ranges_histogram.svg", "fig7_ber.svg",
                        "features/fig5a_accuracy.svg"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  EXPECT_TRUE(contains(slurp(out + "/report.html"), "most critical feature maps"));
  // A missing module is named.
  r = run("reproduce --benchmark imagenet-sample --torchscript " + d.file("none.pt") + " --out " +
          d.file("x"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "none.pt")) << r.output;
}

TEST(Reproduce, RunsTheStudyAndKeepsFinishedStages) {
  TempDir d;
  const std::string out = d.file("study");
  const std::string args = "reproduce --benchmark mnist --models " +
                           std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6 --out " + out +
                           " --images 30 --ber-images 30 --runs 3 --iterations 1 --limit 300"
                           " --relevance-images 30 --calibration-images 50 --test-images 1000 --range-images 500"
                           " --threads 2";
  Result r = run(args);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(slurp(out + "/results.json"));
  EXPECT_EQ(j["benchmark"], "mnist");
  EXPECT_EQ(j["models"]["original"]["arch"], "mnist-cnn");
  EXPECT_EQ(j["models"]["architecture"]["arch"], "mnist-cnn-opt");
  EXPECT_EQ(j["models"]["features"]["arch"], "mnist-cnn-opt");
  for (const std::string s : {"original", "architecture", "features", "ranges", "features_ranges"}) {
    const auto c = nlohmann::json::parse(slurp(out + "/campaigns/" + s + "-msb/summary.json"));
    EXPECT_EQ(j["exhaustive"][s]["worst_case"], c["overall"]["worst_case"]) << s;
    EXPECT_EQ(c["golden"]["images"], 30);
    const auto b = nlohmann::json::parse(slurp(out + "/campaigns/" + s + "-ber/summary.json"));
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(j["ber"][s][i], b["ber"][i]["mean"]) << s << i;
  }
  const double w0 = j["exhaustive"]["original"]["worst_case"], w1 = j["exhaustive"]["architecture"]["worst_case"],
               w2 = j["exhaustive"]["features"]["worst_case"];
  EXPECT_DOUBLE_EQ(j["architecture_optimization"]["worst_case_reduction"].get<double>(), 1 - w1 / w0);
  if (w1 > 0)
    EXPECT_DOUBLE_EQ(j["feature_optimization"]["worst_case_reduction"].get<double>(), 1 - w2 / w1);
  // The bottleneck behind the pooling of mnist-cnn is the worst site, even on 30 images.
  EXPECT_GT(w0, w1);
  // Site by site, before and after feature optimization, from the campaigns' own files.
  const auto& sites = j["feature_optimization"]["sites"];
  ASSERT_EQ(sites.size(), 3u) << sites.dump();
  for (const auto& site : sites) {
    const std::string label = site["site"];
    const std::string dirs[2] = {out + "/campaigns/architecture-msb", out + "/campaigns/features-msb"};
    for (int k = 0; k < 2; ++k) {
      const auto c = nlohmann::json::parse(slurp(dirs[k] + "/summary.json"));
      for (const auto& cs : c["sites"])
        if (cs["label"] == label) {
          EXPECT_EQ(site["worst_case"][k], cs["worst_case"]) << label;
          EXPECT_EQ(site["mean"][k], cs["mean"]) << label;
        }
      // SD(max / mean) over the features' largest rates, from rates_siteK.npy.
      const NpyArray a = read_npy(dirs[k] + "/rates_" + label + ".npy");
      ASSERT_EQ(a.shape.size(), 3u);
      const int64_t per = a.shape[1] * a.shape[2];
      std::vector<double> mx(a.shape[0], 0.0);
      for (int64_t i = 0; i < a.shape[0] * per; ++i) mx[i / per] = std::max(mx[i / per], a.data[i]);
      double mean = 0, sq = 0;
      for (double x : mx) mean += x / mx.size();
      if (mean == 0) {
        EXPECT_TRUE(site["feature_spread"][k].is_null()) << label;
        continue;
      }
      for (double x : mx) sq += (x / mean - 1) * (x / mean - 1) / mx.size();
      EXPECT_NEAR(site["feature_spread"][k].get<double>(), std::sqrt(sq), 1e-12) << label << k;
    }
  }
  EXPECT_TRUE(contains(slurp(out + "/report.html"), "SD(rate/mean) of the features"));
  EXPECT_EQ(j["feature_optimization"]["iterations"], 1);
  // The range restriction: of the architecture-optimized model and of the feature-optimized one.
  const Model ranges = load_model(out + "/ranges.fgm");
  ASSERT_TRUE(ranges.quant.has_value());
  for (int s : ranges.net.sites()) EXPECT_TRUE(ranges.quant->act[s].restricted) << s;
  EXPECT_EQ(ranges.meta["harden"]["range_images"], 500);
  EXPECT_EQ(ranges.meta["harden"]["from"], out + "/architecture.fgm");
  EXPECT_EQ(load_model(out + "/features_ranges.fgm").meta["harden"]["from"], out + "/features.fgm");
  const double w3 = j["exhaustive"]["ranges"]["worst_case"];
  if (w1 > 0)
    EXPECT_DOUBLE_EQ(j["range_restriction"]["worst_case_reduction"].get<double>(), 1 - w3 / w1);
  EXPECT_TRUE(j["ber"]["mean_relative_reduction"].contains("features_ranges_vs_architecture"));
  EXPECT_EQ(j["commands"].size(), 14u);
  const std::string html = slurp(out + "/report.html");
  size_t figures = 0;
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) ++figures;
  EXPECT_EQ(figures, 6u) << "the six figures are inlined";
  EXPECT_TRUE(contains(html, "feature-optimized")) << html.substr(0, 2000);
  for (const char* f : {"fig3a_architecture_histogram.svg", "fig3b_features_histogram.svg",
                        "ranges_histogram.svg", "fig7_ber.svg",
                        "features/fig5a_accuracy.svg", "features/fig5b_criticality_sd.svg"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  // Again: every stage is kept, the same results.
  r = run(args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(contains(r.output, "reproduce: architecture: flipguard")) << r.output;
  EXPECT_TRUE(contains(r.output, "kept")) << r.output;
  const auto again = nlohmann::json::parse(slurp(out + "/results.json"));
  EXPECT_EQ(again["exhaustive"], j["exhaustive"]);
  EXPECT_EQ(again["ber"], j["ber"]);
  // Other options on the same directory are refused; a missing reference model is named.
  std::string other = args;
  other.replace(other.find("--runs 3"), 8, "--runs 4");
  r = run(other);
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "other options")) << r.output;
  r = run("reproduce --benchmark cifar10 --models " + d.file("none") + " --out " + d.file("x"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "cifar-cnn-cifar10-q8.fgm")) << r.output;
  r = run("reproduce --benchmark imagenet --out " + d.file("x"));
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "cifar10")) << r.output;
}
