// Campaign plans, sampling, resuming, statistics and the result files.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include "helpers.hpp"
#include "fault_fixtures.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
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

/// MSB faults of site 3 (the global average pooling) of z's network: 64 fault sets, quick to run.
CampaignPlan gap_plan(const ZooCase& z) {
  CampaignOptions o;
  o.sites = {3};
  return CampaignPlan(*z.q, o);
}

TEST(Campaign, ResumeAfterAStopGivesTheIdenticalResult) {
  ZooCase z("mnist-cnn", 12);
  const CampaignPlan plan = gap_plan(z);
  ReferenceEngine e(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts full = run_campaign(plan, e, z.g->correct(), {});
  ASSERT_TRUE(full.complete());
  ASSERT_GT(*std::max_element(full.failures.begin(), full.failures.end()), 0);

  const TempDir tmp("flipguard-resume");
  const fs::path dir = tmp.path;
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
}

// A checkpoint is resumed only as it was written: a flipped byte fails its CRC-32, and counts
// that no run of this campaign could have written (more failures than images) are refused even
// with a matching CRC-32.
TEST(Campaign, ADamagedOrImpossibleCheckpointIsRefused) {
  ZooCase z("mnist-cnn", 12);
  const CampaignPlan plan = gap_plan(z);
  ReferenceEngine e(*z.q, *z.g, FaultTarget::Activations);
  const TempDir tmp("flipguard-damaged");
  RunOptions r;
  r.checkpoint = (tmp.path / "checkpoint.json").string();
  r.fingerprint = {{"case", "damaged"}};
  r.stop_after = 25;
  run_campaign(plan, e, z.g->correct(), r);
  r.resume = true;
  r.stop_after = 0;
  const std::string text = slurp(r.checkpoint);
  auto write = [&](const std::string& t) { std::ofstream(r.checkpoint) << t; };
  auto resumed = [&] { return error_of([&] { run_campaign(plan, e, z.g->correct(), r); }); };
  // One digit of a count changed, as a damaged disk or a hand edit would.
  nlohmann::json j = nlohmann::json::parse(text);
  const size_t done = std::find_if(j["failures"].begin(), j["failures"].end(),
                                   [](const nlohmann::json& f) { return f.get<int64_t>() >= 0; }) -
                      j["failures"].begin();
  ASSERT_LT(done, j["failures"].size());
  j["failures"][done] = j["failures"][done].get<int64_t>() + 1;
  write(j.dump());
  EXPECT_NE(resumed().find("CRC-32 does not match"), std::string::npos) << resumed();
  // A count of 999999 with its CRC-32 recomputed: more failures than images.
  j["failures"][done] = 999999;
  j.erase("crc32");
  const std::string body = j.dump();
  j["crc32"] = crc32_of(body.data(), body.size());
  write(j.dump());
  const std::string impossible = resumed();
  const std::vector<std::string> parts = {"fault set " + std::to_string(done), "999999 failures",
                                          "expected -1 (pending) to " +
                                              std::to_string(z.g->correct())};
  for (const std::string& part : parts)
    EXPECT_NE(impossible.find(part), std::string::npos) << part << " not in: " << impossible;
  // Members missing or of another type, each with its CRC-32 recomputed: an Error naming what
  // is wrong (fuzz_campaign_checkpoint found the first: a missing fingerprint read past the
  // object).
  auto resealed = [&](nlohmann::json k) {
    k.erase("crc32");
    const std::string b = k.dump();
    k["crc32"] = crc32_of(b.data(), b.size());
    write(k.dump());
    return resumed();
  };
  const nlohmann::json valid = nlohmann::json::parse(text);
  nlohmann::json k = valid;
  k.erase("fingerprint");
  EXPECT_NE(resealed(k).find("no fingerprint"), std::string::npos) << resumed();
  k = valid;
  k["failures"][done] = 1e300;
  EXPECT_NE(resealed(k).find("expected a whole number"), std::string::npos) << resumed();
  k = valid;
  k["seconds"] = "soon";
  EXPECT_NE(resealed(k).find("seconds is \"soon\", expected a number"), std::string::npos) << resumed();
  k = valid;
  k["version"] = "2";
  EXPECT_NE(resealed(k).find("has version 0, expected 2"), std::string::npos) << resumed();
  // The checkpoint as written resumes to the full result.
  write(text);
  EXPECT_TRUE(run_campaign(plan, e, z.g->correct(), r).complete());
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
  const TempDir tmp("flipguard-results");
  const fs::path dir = tmp.path;
  std::vector<std::string> warnings;
  const auto s = write_campaign_results(dir.string(), plan, c, g.totals(), {{"model", "tiny"}}, 0.25, warnings);
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
  const auto automatic = write_campaign_results(dir.string(), plan, c, g.totals(), {}, 0, warnings);
  EXPECT_DOUBLE_EQ(automatic["histogram"]["bin_width"].get<double>(), 0.5);

  // The folder holds one campaign's results: an earlier campaign's files of other sites go, other
  // files (a checkpoint, the user's notes) stay.
  for (const char* stale : {"rates_site7.csv", "rates_site7.npy", "rates_weights3.npy",
                            "samples.csv", "ber.svg"})
    std::ofstream(dir / stale) << "earlier";
  std::ofstream(dir / "notes.txt") << "mine";
  std::ofstream(dir / "checkpoint.json") << "{}";
  write_campaign_results(dir.string(), plan, c, g.totals(), {}, 0.25, warnings);
  for (const char* stale : {"rates_site7.csv", "rates_site7.npy", "rates_weights3.npy",
                            "samples.csv", "ber.svg"})
    EXPECT_FALSE(fs::exists(dir / stale)) << stale;
  for (const char* kept : {"notes.txt", "checkpoint.json", "rates_site0.csv", "rates_site0.npy",
                           "summary.json", "histogram.csv"})
    EXPECT_TRUE(fs::exists(dir / kept)) << kept;
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

// An image-major campaign stopped and resumed (partial counts in the checkpoint) equals an
// uninterrupted one, and the fault-major reference.
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
  const TempDir tmp("flipguard-cone");
  const fs::path dir = tmp.path;
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
}

// A stop inside an image chunk (RunOptions::stop, as SIGINT/SIGTERM ask for it) checkpoints the
// fault sets that already counted that chunk; the resume gives the uninterrupted result, and a
// checkpoint whose position inside the chunk is impossible is refused.
TEST(Campaign, ImageMajorStopInsideAChunkResumesExactly) {
  ZooCase z("mnist-cnn-opt", 42);
  const CampaignPlan plan(*z.q, sampled_sites_1_2());
  ConeEngine cone(*z.q, *z.g, FaultTarget::Activations);
  RunOptions r;
  r.image_chunk = 1000;  // every image in one chunk
  const CampaignCounts want = run_campaign(plan, cone, z.g->correct(), r);
  ASSERT_TRUE(want.complete());
  const TempDir tmp("flipguard-stop");
  r.checkpoint = (tmp.path / "checkpoint.json").string();
  r.fingerprint = {{"case", "stop inside a chunk"}};
  r.checkpoint_seconds = 1e9;  // only the stop's checkpoint
  std::atomic<int> asked{0};
  r.stop = [&] { return ++asked >= 1; };  // after the first step: one fault set
  EXPECT_FALSE(run_campaign(plan, cone, z.g->correct(), r).complete());
  EXPECT_EQ(asked, 1);
  nlohmann::json j = nlohmann::json::parse(slurp(r.checkpoint));
  EXPECT_EQ(j["partial"]["images"], 0);
  EXPECT_EQ(j["partial"]["sets_done"], 1);
  EXPECT_EQ(j["partial"]["chunk_end"], z.g->correct());
  const std::string text = slurp(r.checkpoint);
  r.resume = true;
  r.stop = nullptr;
  EXPECT_EQ(run_campaign(plan, cone, z.g->correct(), r).failures, want.failures);
  // More fault sets done than there are pending, with the CRC-32 recomputed: refused.
  j["partial"]["sets_done"] = plan.size();
  j.erase("crc32");
  const std::string body = j.dump();
  j["crc32"] = crc32_of(body.data(), body.size());
  std::ofstream(r.checkpoint) << j.dump();
  const std::string msg = error_of([&] { run_campaign(plan, cone, z.g->correct(), r); });
  EXPECT_NE(msg.find("fault sets into images [0, " + std::to_string(z.g->correct()) + ")"),
            std::string::npos) << msg;
  std::ofstream(r.checkpoint) << text;
  EXPECT_EQ(run_campaign(plan, cone, z.g->correct(), r).failures, want.failures);
}

// A list campaign (inject --faults) evaluates exactly the faults it is given, in their order:
// a sampled campaign's faults, reversed, replayed on either engine give its counts reversed.
TEST(Campaign, AFaultListReplaysExactlyThoseFaults) {
  ZooCase z("mnist-cnn-opt", 40);
  const CampaignPlan sampled(*z.q, sampled_sites_1_2());
  ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts want = run_campaign(sampled, ref, z.g->correct(), {});
  CampaignOptions o;
  o.campaign = "list";
  for (int64_t i = sampled.size() - 1; i >= 0; --i) o.faults.push_back(sampled.faults(i)[0]);
  const CampaignPlan list(*z.q, o);
  ASSERT_EQ(list.size(), sampled.size());
  EXPECT_EQ(list.space().tensors.size(), 2u);  // the sites its faults name: 1 and 2
  std::vector<int64_t> reversed(want.failures.rbegin(), want.failures.rend());
  ConeEngine cone(*z.q, *z.g, FaultTarget::Activations);
  EXPECT_EQ(run_campaign(list, cone, z.g->correct(), {}).failures, reversed);
  EXPECT_EQ(run_campaign(list, ref, z.g->correct(), {}).failures, reversed);
  // Faults that name no site, element or bit of the network: the fault's place and the range.
  const auto sites = z.q->network().sites();
  const int64_t size = z.q->network().shapes()[sites[1]].numel();
  auto refused = [&](Fault f) {
    CampaignOptions bad = o;
    bad.faults[2] = f;
    return error_of([&] { CampaignPlan(*z.q, bad); });
  };
  std::string msg = refused({sites[1], size, 0});
  EXPECT_NE(msg.find("fault 2 of the list: index " + std::to_string(size)), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 0.." + std::to_string(size - 1)), std::string::npos) << msg;
  msg = refused({sites[1], 0, 8});
  EXPECT_NE(msg.find("bit 8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 0..7"), std::string::npos) << msg;
  msg = refused({static_cast<int>(z.q->network().blocks.size()) - 1, 0, 0});  // the classifier
  EXPECT_NE(msg.find("is not a site"), std::string::npos) << msg;
  o.sites = {1};
  EXPECT_NE(error_of([&] { CampaignPlan(*z.q, o); }).find("expected no sites"), std::string::npos);
  o.sites.clear();
  o.faults.clear();
  EXPECT_NE(error_of([&] { CampaignPlan(*z.q, o); }).find("at least one fault"), std::string::npos);
}

// Fault lists read from CSV (a campaign's samples.csv as is: extra columns, a quoted cell, CRLF
// line ends) and from .npy; what is not one is refused with the file, line and value.
TEST(Campaign, FaultListsReadFromCsvAndNpy) {
  const TempDir d("flipguard-faults");
  const std::string csv = d.file("samples.csv");
  std::ofstream(csv) << "block,name,index,bit,failure_rate\r\n"
                        "1,\"conv,1\",17,7,0.25\r\n"
                        "2,conv2,0,0,0\r\n";
  const std::vector<Fault> want = {{1, 17, 7}, {2, 0, 0}};
  EXPECT_EQ(read_fault_list(csv), want);
  const std::string npy = d.file("faults.npy");
  write_file_atomic(npy, npy_bytes(std::vector<int64_t>{1, 17, 7, 2, 0, 0}, {2, 3}));
  EXPECT_EQ(read_fault_list(npy), want);
  std::ofstream(d.file("site.csv")) << "site,index,bit\n3,5,1\n";
  EXPECT_EQ(read_fault_list(d.file("site.csv")), (std::vector<Fault>{{3, 5, 1}}));
  auto refused = [&](const std::string& name, const std::string& text) {
    std::ofstream(d.file(name)) << text;
    return error_of([&] { read_fault_list(d.file(name)); });
  };
  std::string msg = refused("nobit.csv", "block,index\n1,2\n");
  EXPECT_NE(msg.find("no column bit"), std::string::npos) << msg;
  msg = refused("word.csv", "block,index,bit\n1,2,3\n1,two,3\n");
  EXPECT_NE(msg.find("line 3: index 'two' is not a whole number"), std::string::npos) << msg;
  msg = refused("short.csv", "block,index,bit\n1,2\n");
  EXPECT_NE(msg.find("line 2 has 2 cells, its header 3"), std::string::npos) << msg;
  msg = refused("negative.csv", "block,index,bit\n1,-2,3\n");
  EXPECT_NE(msg.find("none negative"), std::string::npos) << msg;
  msg = refused("empty.csv", "block,index,bit\n");
  EXPECT_NE(msg.find("has no faults"), std::string::npos) << msg;
  write_file_atomic(d.file("flat.npy"), npy_bytes(std::vector<int64_t>{1, 17, 7}, {3}));
  msg = error_of([&] { read_fault_list(d.file("flat.npy")); });
  EXPECT_NE(msg.find("expected (n, 3)"), std::string::npos) << msg;
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
