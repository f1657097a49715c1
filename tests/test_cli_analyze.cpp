// flipguard analyze: criticality from the command line and its comparison with campaigns.
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

// analyze on the trained mnist-cnn: relevance, criticality and the comparison with a campaign of
// site 3; site 2, read only by the global average pooling, takes its criticality through it.
TEST(Analyze, WritesCriticalityAndComparesWithACampaign) {
  TempDir d;
  const std::string campaign = d.file("campaign"), out = d.file("analysis");
  Result r = run("inject --model " + kModel + " --data mnist --sites 3 --images 40 --out " + campaign);
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("analyze --model " + kModel + " --data mnist --images 30 --batch 7 --top-k 5 --campaign " +
          campaign + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "Spearman(eta, mean rate)")) << r.output;
  const auto j = nlohmann::json::parse(slurp(out + "/criticality.json"));
  EXPECT_EQ(j["arch"], "mnist-cnn");
  EXPECT_EQ(j["images"], 30);
  EXPECT_EQ(j["input_rule"], "zplus");
  ASSERT_EQ(j["sites"].size(), 4u);
  for (const auto& s : j["sites"]) {
    EXPECT_NEAR(s["relevance_total"].get<double>(), 1.0, 1e-6) << s["label"];
    EXPECT_EQ(s["rho"].size(), s["shape"][0].get<size_t>());
    EXPECT_EQ(s["eta"].size(), s["shape"][0].get<size_t>());
    EXPECT_EQ(s["ranking"].size(), s["shape"][0].get<size_t>());
    EXPECT_GT(s["sd_normalized_eta"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["sites"][2]["readers"], nlohmann::json({"gap"}));
  EXPECT_EQ(j["sites"][2]["criticality_from"], nlohmann::json({"scores"}));
  EXPECT_FALSE(j["sites"][2].contains("validation"));
  const auto& v = j["sites"][3]["validation"];
  EXPECT_TRUE(v["spearman_eta_mean_rate"].is_number()) << v.dump();
  EXPECT_GE(v["spearman_eta_mean_rate"].get<double>(), -1.0);
  EXPECT_LE(v["spearman_eta_mean_rate"].get<double>(), 1.0);
  EXPECT_EQ(v["top_k"], 5);
  EXPECT_EQ(v["mean_rate"].size(), 64u);
  // The measured spread is SD(rate / mean) of the features' rates the same JSON lists.
  for (const char* key : {"mean_rate", "max_rate"}) {
    const auto rates = v[key].get<std::vector<double>>();
    double mean = 0, sq = 0;
    for (double x : rates) mean += x / rates.size();
    for (double x : rates) sq += (x / mean - 1) * (x / mean - 1) / rates.size();
    const std::string field = std::string("sd_normalized_") + key;
    ASSERT_TRUE(v[field].is_number()) << v.dump();
    EXPECT_NEAR(v[field].get<double>(), std::sqrt(sq), 1e-12) << field;
  }
  EXPECT_TRUE(contains(r.output, "measured spread SD(rate/mean)")) << r.output;
  // --baseline reads what analyze writes: the analysis against itself changes nothing, and its
  // figures before are the ones the analysis lists.
  const std::string self = d.file("self");
  const Result same = run("analyze --model " + kModel + " --data mnist --images 30 --batch 7 " +
                          "--campaign " + campaign + " --baseline " + out + " --out " + self);
  ASSERT_EQ(same.status, 0) << same.output;
  EXPECT_TRUE(contains(same.output, "before -> after feature optimization")) << same.output;
  const auto sj = nlohmann::json::parse(slurp(self + "/criticality.json"));
  ASSERT_EQ(sj["baseline"]["sites"].size(), 1u) << "site 3 alone has campaign rates";
  const auto& c = sj["baseline"]["sites"][0];
  EXPECT_EQ(c["site"], "site3");
  const auto max_rates = v["max_rate"].get<std::vector<double>>();
  const double worst = *std::max_element(max_rates.begin(), max_rates.end());
  EXPECT_EQ(c["worst_rate"], nlohmann::json({worst, worst}));
  EXPECT_EQ(c["sd_normalized_max_rate"],
            nlohmann::json({v["sd_normalized_max_rate"], v["sd_normalized_max_rate"]}));
  EXPECT_EQ(c["spearman_eta_max_rate_before"], v["spearman_eta_max_rate"]);
  EXPECT_EQ(c["sd_normalized_eta_before"], j["sites"][3]["sd_normalized_eta"]);
  EXPECT_TRUE(c["spearman_eta_rate_change"].is_null()) << "every ratio is 1: " << c.dump();
  EXPECT_EQ(c["features_worse"], 0);
  EXPECT_EQ(c["features_compared"].get<int>(), static_cast<int>(std::count_if(
      v["mean_rate"].begin(), v["mean_rate"].end(), [](const auto& x) { return x > 0; })));
  EXPECT_TRUE(j["mean_sd_normalized_eta"].is_number());
  for (const char* f : {"criticality.json", "criticality.csv", "criticality.svg", "criticality.gp",
                        "validation.svg", "validation.gp", "relevance_input.npy",
                        "relevance_site0.npy", "relevance_site3.npy"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(out)) files += e.is_regular_file();
  EXPECT_EQ(files, 11u) << "no temporary file is left";
}

TEST(Analyze, BadRequestsAreRejectedWithoutOutput) {
  TempDir d;
  const std::string out = d.file("analysis");
  const std::string base = "analyze --model " + kModel + " --data mnist --images 5 --out " + out;
  Result r = run(base + " --input-rule w2");
  EXPECT_NE(r.status, 0);
  for (const char* n : {"w2", "auto", "zplus", "zb"}) EXPECT_TRUE(contains(r.output, n)) << r.output;
  r = run("analyze --model " + kModel + " --data mnist --images 0 --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "images 0: expected a positive number")) << r.output;
  r = run(base + " --campaign " + d.file("nowhere"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "nowhere")) << r.output;
  // A campaign of another network.
  fs::create_directories(d.file("other"));
  std::ofstream(d.file("other/summary.json"))
      << R"({"arch": "mnist-cnn-opt", "campaign": "exhaustive", "target": "activations"})";
  r = run(base + " --campaign " + d.file("other"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "arch 'mnist-cnn-opt': expected 'mnist-cnn'")) << r.output;
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, d.file("f.fgm"));
  r = run("analyze --model " + d.file("f.fgm") + " --data mnist --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "not quantized")) << r.output;
  r = run(base + " --frobnicate");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--input-rule")) << r.output;
  // A site in two campaign directories; a baseline without a campaign, or that is no analysis.
  fs::create_directories(d.file("c3"));
  std::ofstream(d.file("c3/summary.json"))
      << R"({"arch": "mnist-cnn", "campaign": "exhaustive", "target": "activations"})";
  write_npy(d.file("c3/rates_site3.npy"), std::vector<double>(64, 0.5), {64, 1, 1});
  r = run(base + " --campaign " + d.file("c3") + " " + d.file("c3"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "site 3 is in both")) << r.output;
  r = run(base + " --baseline " + d.file("c3"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--campaign")) << r.output;
  r = run(base + " --campaign " + d.file("c3") + " --baseline " + d.file("c3"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "no criticality.json in")) << r.output;
  std::ofstream(d.file("c3/criticality.json")) << R"({"model": "m.fgm", "arch": "mnist-cnn", "sites": []})";
  r = run(base + " --campaign " + d.file("c3") + " --baseline " + d.file("c3"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "has no site with campaign rates")) << r.output;
  std::ofstream(d.file("c3/criticality.json")) << R"({"model": "m.fgm", "arch": "mnist-cnn-opt", "sites": []})";
  r = run(base + " --campaign " + d.file("c3") + " --baseline " + d.file("c3"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "analyzes a mnist-cnn-opt model: expected mnist-cnn")) << r.output;
  EXPECT_FALSE(fs::exists(out));
}
