// Campaigns whose golden run is split into chunks of images (run_image_campaign): the same
// counts as one golden run, with every engine, resumable chunk by chunk; and the progress that
// the long library calls report.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>

#include "helpers.hpp"
#include "fault_fixtures.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

Dataset mnist_test(int64_t n) { return load_dataset(parse_data_spec("mnist"), Split::Test).head(n); }

/// Every report of a callback, and checks that hold for all of them.
struct Recorder {
  std::vector<Progress> seen;
  ProgressFn fn() {
    return [this](const Progress& p) { seen.push_back(p); };
  }
  /// The phases in the order they started, each checked: done never decreases, stays within
  /// its total, and the phase's last report is done == total.
  std::vector<std::string> phases() const {
    std::vector<std::string> order;
    std::map<std::string, Progress> last;
    for (const Progress& p : seen) {
      auto it = last.find(p.phase);
      if (it == last.end()) {
        order.push_back(p.phase);
      } else {
        EXPECT_GE(p.done, it->second.done) << p.phase;
        EXPECT_EQ(p.total, it->second.total) << p.phase;
      }
      EXPECT_LE(p.done, p.total) << p.phase;
      EXPECT_FALSE(p.unit.empty()) << p.phase;
      last[p.phase] = p;
    }
    for (const auto& [phase, p] : last) EXPECT_EQ(p.done, p.total) << phase << " did not finish";
    return order;
  }
};

}  // namespace

TEST(ImageCampaign, ChunksAndTheirCheckpointsAreNamedAndSized) {
  ZooCase z("mnist-cnn", 4);
  const int64_t per_image = GoldenRun::bytes_per_image(*z.q);
  // The input (1x28x28) and every site but the scores, one byte per code in 8 bits.
  int64_t want = 28 * 28;
  const auto shapes = z.q->network().shapes();
  for (size_t b = 0; b + 1 < shapes.size(); ++b) want += shapes[b].numel();
  EXPECT_EQ(per_image, want);
  EXPECT_EQ(golden_chunks(*z.q, 100, 0), std::make_pair(int64_t{1}, int64_t{100}));
  EXPECT_EQ(golden_chunks(*z.q, 100, 100 * per_image), std::make_pair(int64_t{1}, int64_t{100}));
  // 30 images fit: four even chunks of 25.
  EXPECT_EQ(golden_chunks(*z.q, 100, 30 * per_image + 1), std::make_pair(int64_t{4}, int64_t{25}));
  EXPECT_EQ(golden_chunks(*z.q, 100, 1), std::make_pair(int64_t{100}, int64_t{1}));
  EXPECT_EQ(golden_chunks(*z.q, 0, 1), std::make_pair(int64_t{1}, int64_t{0}));
  EXPECT_THROW(golden_chunks(*z.q, 10, -1), Error);
  EXPECT_EQ(chunk_checkpoint_path("out/checkpoint.json", 0, 1), "out/checkpoint.json");
  EXPECT_EQ(chunk_checkpoint_path("out/checkpoint.json", 2, 5), "out/checkpoint.chunk2of5.json");
  EXPECT_EQ(chunk_checkpoint_path("out/checkpoint.rank1of2.json", 0, 3),
            "out/checkpoint.rank1of2.chunk0of3.json");
  EXPECT_THROW(chunk_checkpoint_path("c.json", 3, 3), Error);
}

TEST(ImageCampaign, ChunkedGoldenRunsGiveTheCountsOfOne) {
  ZooCase z("mnist-cnn", 40);
  const Dataset d = mnist_test(40);
  const int64_t per_image = GoldenRun::bytes_per_image(*z.q);
  CampaignOptions exhaustive, sampled;
  exhaustive.sites = {3};
  sampled.campaign = "sampled";
  sampled.error = 0.05;
  for (const CampaignOptions& o : {exhaustive, sampled}) {
    const CampaignPlan plan(*z.q, o);
    ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
    const CampaignCounts want = run_campaign(plan, ref, z.g->correct(), {});
    ASSERT_GT(*std::max_element(want.failures.begin(), want.failures.end()), 0);
    for (const std::string engine : {"reference", "incremental", "cone"}) {
      ImageCampaignOptions io;
      io.engine = engine;
      io.golden_bytes = 9 * per_image;  // chunks of 8 images: 5 golden runs
      int engines = 0;
      io.on_engine = [&](const Engine&) { ++engines; };
      Recorder golden;
      io.progress = golden.fn();
      const ImageCampaign run = run_image_campaign(plan, *z.q, d.images, d.labels, io);
      EXPECT_EQ(run.chunks, 5);
      EXPECT_EQ(run.chunk_images, 8);
      EXPECT_EQ(engines, 5);
      EXPECT_EQ(run.golden.images, 40);
      EXPECT_EQ(run.golden.correct, z.g->correct());
      EXPECT_EQ(run.counts.failures, want.failures) << engine << " " << o.campaign;
      EXPECT_TRUE(run.checkpoints.empty());
      EXPECT_EQ(golden.phases(), (std::vector<std::string>{"golden run 1/5", "golden run 2/5",
                                                           "golden run 3/5", "golden run 4/5",
                                                           "golden run 5/5"}));
    }
  }
}

TEST(ImageCampaign, AStoppedChunkedRunResumesToTheSameCounts) {
  ZooCase z("mnist-cnn", 30);
  const Dataset d = mnist_test(30);
  CampaignOptions o;
  o.sites = {3};
  const CampaignPlan plan(*z.q, o);
  ReferenceEngine ref(*z.q, *z.g, FaultTarget::Activations);
  const CampaignCounts want = run_campaign(plan, ref, z.g->correct(), {});
  const TempDir tmp("flipguard-chunks");
  for (const std::string engine : {"reference", "cone"}) {
    ImageCampaignOptions io;
    io.engine = engine;
    io.golden_bytes = 10 * GoldenRun::bytes_per_image(*z.q);  // 3 chunks of 10
    io.run.checkpoint = (tmp.path / "checkpoint.json").string();
    io.run.checkpoint_seconds = 0;
    io.run.fingerprint = {{"case", engine}};
    io.run.image_chunk = 4;
    std::vector<CampaignProgress> seen;
    io.run.progress = [&](const CampaignProgress& p) { seen.push_back(p); };
    io.run.stop_after = plan.size() / 3;  // inside the first chunk
    ImageCampaign part = run_image_campaign(plan, *z.q, d.images, d.labels, io);
    EXPECT_FALSE(part.counts.complete());
    ASSERT_EQ(part.checkpoints.size(), 1u);  // it stopped in the first chunk
    EXPECT_EQ(part.checkpoints[0], (tmp.path / "checkpoint.chunk0of3.json").string());
    EXPECT_TRUE(fs::exists(part.checkpoints[0]));
    io.run.resume = true;
    io.run.stop_after = 0;
    const ImageCampaign rest = run_image_campaign(plan, *z.q, d.images, d.labels, io);
    ASSERT_TRUE(rest.counts.complete()) << engine;
    EXPECT_EQ(rest.counts.failures, want.failures) << engine;
    EXPECT_EQ(rest.golden.correct, z.g->correct());
    ASSERT_EQ(rest.checkpoints.size(), 3u);
    // Progress counts fault sets' worth of work over all chunks, up to every set once.
    ASSERT_FALSE(seen.empty());
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_GE(seen[i].done, seen[i - 1].done);
    EXPECT_EQ(seen.back().total, plan.size());
    EXPECT_EQ(seen.back().done, plan.size());
    // A checkpoint of another chunking is not resumed: the chunk is fingerprinted.
    for (const auto& c : rest.checkpoints) ASSERT_TRUE(fs::exists(c)) << c;
    fs::copy_file(rest.checkpoints[0], tmp.path / "checkpoint.chunk0of2.json",
                  fs::copy_options::overwrite_existing);
    io.golden_bytes = 15 * GoldenRun::bytes_per_image(*z.q);  // 2 chunks of 15
    EXPECT_THROW(run_image_campaign(plan, *z.q, d.images, d.labels, io), Error);
    for (const auto& e : fs::directory_iterator(tmp.path)) fs::remove(e.path());
  }
}

TEST(Progress, LongCallsReportEveryPhaseToItsEnd) {
  ZooCase z("mnist-cnn", 4);
  const Dataset d = mnist_test(24);
  {
    Recorder r;
    QuantOptions o;
    o.progress = r.fn();
    calibrate(z.net, d.images, o);
    EXPECT_EQ(r.phases(), (std::vector<std::string>{"calibration", "refinement"}));
    EXPECT_EQ(r.seen.front().total, 24);
  }
  {
    Recorder r;
    const GoldenRun g(*z.q, d.images, d.labels, 5, r.fn());
    EXPECT_EQ(r.phases(), std::vector<std::string>{"golden run"});
    EXPECT_EQ(r.seen.back().done, 24);
    EXPECT_GE(r.seen.size(), 2u);
  }
  {
    Recorder r;
    RelevanceOptions o;
    o.batch = 10;
    o.progress = r.fn();
    mean_relevance(*z.q, d.images, d.labels, o);
    EXPECT_EQ(r.phases(), std::vector<std::string>{"relevance"});
    EXPECT_EQ(r.seen.size(), 4u);  // 0, 10, 20, 24
  }
}

TEST(Progress, AlgorithmOneNamesItsIterations) {
  ZooCase z("mnist-cnn", 4);
  const Dataset train = load_dataset(parse_data_spec("mnist"), Split::Train).head(64);
  const Dataset test = mnist_test(32);
  FeatureOptions o;
  o.iterations = 2;
  o.relevance_images = 16;
  o.quant.calibration_images = 32;
  o.quant.refine = false;
  o.finetune.epochs = 1;
  o.finetune.batch_size = 32;
  o.finetune.lr = 1e-4;
  o.finetune.log_every = 0;
  Recorder r;
  o.progress = r.fn();
  FeatureState st;
  st.net = z.net;
  st.formats = z.q->formats();
  try {
    optimize_features(st, train, test, o, [](const std::string&) {});
  } catch (const Error&) {
    // A fine-tuning judged diverged (check_finetuning) ends the run after its phases reported.
  }
  const std::vector<std::string> want{
      "iteration 0/2: Fig. 5b relevance", "iteration 1/2: relevance",
      "iteration 1/2: calibration",       "iteration 1/2: Fig. 5b relevance",
      "iteration 1/2: fine-tuning",       "iteration 2/2: relevance",
      "iteration 2/2: calibration",       "iteration 2/2: Fig. 5b relevance"};
  std::vector<std::string> got = r.phases();
  ASSERT_GE(got.size(), 4u);
  got.resize(std::min(got.size(), want.size()));
  EXPECT_EQ(got, std::vector<std::string>(want.begin(), want.begin() + got.size()));
}
