// The library behind `flipguard reproduce` and `flipguard analyze`: the campaign reader against
// the campaign writer, the study's plan and its runner, and the analysis with its baseline reader.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/study.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

const std::string kModels = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6";

/// The study of the reference mnist-cnn (tests/data/mnist-e6) into `out`.
StudyOptions mnist_study(const std::string& out) {
  StudyOptions o;
  o.benchmark = "mnist";
  o.models = kModels;
  o.out = out;
  return o;
}

}  // namespace

// What write_campaign_results writes, read_campaign reads: every site's rates at its neurons,
// the summary; with selected neurons, NaN elsewhere.
TEST(CampaignReader, ReadsWhatTheWriterWrote) {
  TempDir d;
  const Model m = load_model(kModel);
  const QuantizedNetwork q(m.net, *m.quant);
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(20);
  const GoldenRun golden(q, test.images, test.labels);
  ASSERT_GT(golden.correct(), 0);
  for (const bool selected : {false, true}) {
    CampaignOptions o;
    o.sites = {2, 3};
    if (selected) o.elements = {1, 5, 70};  // in site 2, whose elements come first
    const CampaignPlan plan(q, o);
    CampaignCounts counts;
    for (int64_t i = 0; i < plan.size(); ++i) counts.failures.push_back(i % (golden.correct() + 1));
    const std::string dir = d.file(selected ? "selected" : "all");
    fs::create_directories(dir);
    std::vector<std::string> warnings;
    write_campaign_results(dir, plan, counts, golden.totals(), {{"arch", m.net.arch}}, 0, warnings);
    const CampaignResults r = read_campaign(dir, m.net);
    EXPECT_EQ(r.summary, nlohmann::json::parse(read_file(dir + "/summary.json")));
    ASSERT_EQ(r.rates.size(), 2u);
    int64_t fault = 0;
    for (const auto& [site, rates] : r.rates) {
      const auto shape = m.net.shapes()[site];
      EXPECT_EQ(rates.sizes(), (std::vector<int64_t>{shape.c, shape.h, shape.w})) << site;
      const auto flat = rates.flatten();
      for (int64_t e = 0; e < flat.numel(); ++e) {
        const double v = flat[e].item<double>();
        const bool injected = !selected || (site == 2 && (e == 1 || e == 5 || e == 70));
        if (!injected) {
          EXPECT_TRUE(std::isnan(v)) << site << " " << e;
          continue;
        }
        EXPECT_EQ(v, static_cast<double>(counts.failures[fault]) / golden.correct())
            << site << " " << e;
        ++fault;
      }
    }
    EXPECT_EQ(fault, plan.size());
    // The directories of a split campaign merge; a site in two of them is refused.
    if (!selected) {
      EXPECT_EQ(read_campaign_rates({dir}, m.net).size(), 2u);
      EXPECT_TRUE(contains(error_of([&] { read_campaign_rates({dir, dir}, m.net); }),
                           "is in both campaign directories"));
    }
  }
  // A campaign of another network.
  const Model other = load_model(kModels + "/mnist-cnn-opt-mnist-q8.fgm");
  EXPECT_TRUE(contains(error_of([&] { read_campaign(d.file("all"), other.net); }),
                       "arch 'mnist-cnn': expected 'mnist-cnn-opt'"));
  EXPECT_TRUE(contains(error_of([&] { read_campaign(d.file("none"), m.net); }), "none"));
}

TEST(Study, PlansTheStagesOfTheMnistStudy) {
  TempDir d;
  StudyOptions o = mnist_study(d.file("study"));
  o.iterations = 1;
  const StudyPlan p = plan_study(o);
  EXPECT_EQ(p.models, (std::vector<std::string>{"original", "architecture", "features", "ranges",
                                                "features_ranges"}));
  EXPECT_EQ(p.base, "architecture");
  EXPECT_EQ(p.files.at("original"), kModel);
  EXPECT_EQ(p.files.at("features"), d.file("study") + "/features.fgm");
  EXPECT_EQ(p.title("ranges"), "architecture-optimized + ranges");
  // architecture, features, 2 x ranges, 5 x 2 campaigns
  ASSERT_EQ(p.stages.size(), 14u);
  EXPECT_EQ(p.stages[0].name, "architecture");
  EXPECT_EQ(p.stages[1].name, "features");
  EXPECT_EQ(p.stages[4].name, "original msb campaign");
  EXPECT_EQ(p.stages[4].output, d.file("study") + "/campaigns/original-msb");
  for (const auto& s : p.stages) EXPECT_FALSE(s.done || s.resume) << s.name;
  EXPECT_TRUE(contains(p.stages[1].command(), "flipguard harden --method features --model " +
                                                   d.file("study") + "/architecture.fgm"));
  EXPECT_TRUE(contains(p.stages[1].command(), "--iterations 1 "));
  EXPECT_EQ(p.options["benchmark"], "mnist");
  EXPECT_FALSE(p.options.contains("finetune_target")) << "labels, the default of mnist";
  // A quoted argument, a kept stage, a stage with a checkpoint.
  EXPECT_EQ((StudyStage{"x", {"harden", "--until-accuracy", "", "it's"}, "", false, false}.command()),
            "flipguard harden --until-accuracy  'it'\\''s'");
  fs::create_directories(d.file("study"));
  std::ofstream(d.file("study/architecture.fgm")) << "x";
  std::ofstream(d.file("study/features.fgm.ckpt")) << "x";
  const StudyPlan again = plan_study(o);
  EXPECT_TRUE(again.stages[0].done);
  EXPECT_FALSE(again.stages[1].done);
  EXPECT_TRUE(again.stages[1].resume);
}

TEST(Study, RunsStagesThroughTheRunnerAndRefusesBadOptions) {
  TempDir d;
  StudyOptions o = mnist_study(d.file("study"));
  std::vector<std::string> ran;
  std::vector<std::string> logged;
  o.log = [&](const std::string& line) { logged.push_back(line); };
  fs::create_directories(o.out);
  std::ofstream(d.file("study/architecture.fgm")) << "x";
  // The runner stops the study at its first stage to run; the options are recorded already.
  const std::string why = error_of([&] {
    run_study(o, [&](const StudyStage& s) {
      ran.push_back(s.name);
      fail("stopped at ", s.name);
    });
  });
  EXPECT_EQ(why, "stopped at features");
  EXPECT_EQ(ran, (std::vector<std::string>{"features"}));
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_EQ(logged[0], "architecture: kept (its result exists)");
  EXPECT_EQ(nlohmann::json::parse(read_file(d.file("study/study.json"))), plan_study(o).options);
  // Other options on the same directory, and bad ones, name the parameter and the value.
  StudyOptions other = o;
  other.runs = 4;
  EXPECT_TRUE(contains(error_of([&] { plan_study(other); }), "other options"));
  other = o;
  other.benchmark = "imagenet";
  EXPECT_TRUE(contains(error_of([&] { plan_study(other); }), "benchmark 'imagenet': expected one of"));
  other = o;
  other.bin_width = 2;
  EXPECT_TRUE(contains(error_of([&] { plan_study(other); }), "bin_width 2"));
  other = o;
  other.benchmark = "cifar10";
  other.out = d.file("x");
  const std::string missing = error_of([&] { plan_study(other); });
  EXPECT_TRUE(contains(missing, "cifar-cnn-cifar10-q8.fgm")) << missing;
  EXPECT_TRUE(contains(missing, "models '" + kModels + "'")) << missing;
  EXPECT_FALSE(contains(missing, "--")) << missing;
}

// The analysis of the reference model with a campaign of site 3, and its criticality.json read
// back as the baseline of another analysis.
TEST(Analysis, WritesItsFilesAndReadsThemBackAsABaseline) {
  TempDir d;
  const Model m = load_model(kModel);
  fs::create_directories(d.file("c3"));
  std::ofstream(d.file("c3/summary.json"))
      << R"({"arch": "mnist-cnn", "campaign": "exhaustive", "target": "activations"})";
  std::vector<double> rates(64);
  for (size_t i = 0; i < rates.size(); ++i) rates[i] = static_cast<double>(i % 7) / 8;
  write_npy(d.file("c3/rates_site3.npy"), rates, {64, 1, 1});
  AnalysisOptions o;
  o.model = kModel;
  o.data = "mnist";
  o.out = d.file("a");
  o.images = 12;
  o.relevance.batch = 5;
  o.campaigns = {d.file("c3")};
  o.top_k = 4;
  o.command = "test";
  const Analysis an = analyze(o);
  EXPECT_EQ(an.relevance.images, 12);
  EXPECT_EQ(an.checks.size(), 1u);
  EXPECT_TRUE(an.changes.empty());
  const auto j = nlohmann::json::parse(read_file(d.file("a/criticality.json")));
  EXPECT_EQ(j["command"], "test");
  EXPECT_EQ(j["batch"], 5);
  EXPECT_EQ(j["campaign"]["top_k"], 4);
  double sum = 0;
  for (const auto& s : j["sites"]) sum += s["sd_normalized_eta"].get<double>();
  EXPECT_NEAR(j["mean_sd_normalized_eta"].get<double>(), sum / 4, 1e-12);
  EXPECT_DOUBLE_EQ(an.mean_sd(), j["mean_sd_normalized_eta"].get<double>());
  EXPECT_TRUE(fs::exists(d.file("a/relevance_site3.npy")));
  EXPECT_TRUE(fs::exists(d.file("a/criticality.csv")));

  const Baseline b = read_baseline(d.file("a"), m.net);
  ASSERT_EQ(b.sites.size(), 1u);
  EXPECT_EQ(b.model, kModel);
  EXPECT_EQ(b.sites.at(3).eta, j["sites"][3]["eta"].get<std::vector<double>>());
  o.baseline = d.file("a");
  o.out = d.file("b");
  const Analysis same = analyze(o);
  ASSERT_EQ(same.changes.size(), 1u);
  EXPECT_EQ(same.changes.at(3).features_worse, 0);

  // Errors name the parameter, never a command-line flag.
  o.images = 0;
  const std::string bad = error_of([&] { analyze(o); });
  EXPECT_EQ(bad, "images 0: expected a positive number");
  o.images = 12;
  o.campaigns.clear();
  EXPECT_TRUE(contains(error_of([&] { analyze(o); }), "without campaigns"));
  const Model opt = load_model(kModels + "/mnist-cnn-opt-mnist-q8.fgm");
  const std::string arch = error_of([&] { read_baseline(d.file("a"), opt.net); });
  EXPECT_TRUE(contains(arch, "analyzes a mnist-cnn model: expected mnist-cnn-opt")) << arch;
  EXPECT_FALSE(contains(arch, "--")) << arch;
  EXPECT_TRUE(contains(error_of([&] { read_baseline(d.file("c3"), m.net); }),
                       "no criticality.json in"));
}
