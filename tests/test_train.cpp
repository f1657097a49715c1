// Training: it learns, it is seeded, and a resumed run equals an uninterrupted one.
#include <flipguard/error.hpp>
#include <flipguard/train.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <set>

#include <filesystem>

using namespace flipguard;
namespace fs = std::filesystem;

namespace {

/// A learnable synthetic task for networks that end in global average pooling: the class is the
/// brightness level of a noisy image.
Dataset bands(int64_t n, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Dataset d;
  d.name = "levels";
  d.labels = torch::randint(0, 10, {n}, gen, torch::kLong);
  auto noise = torch::randint(-20, 21, {n, 1, 28, 28}, gen, torch::kLong);
  d.images = (noise + 20 + 24 * d.labels.view({-1, 1, 1, 1})).clamp(0, 255).to(torch::kUInt8);
  for (int i = 0; i < 10; ++i) d.class_names.push_back(std::to_string(i));
  return d;
}

bool same_weights(const Network& a, const Network& b) {
  for (size_t i = 0; i < a.blocks.size(); ++i)
    if (a.blocks[i].weighted() && (!torch::equal(a.blocks[i].weight, b.blocks[i].weight) ||
                                   !torch::equal(a.blocks[i].bias, b.blocks[i].bias)))
      return false;
  return true;
}

void quiet(const std::string&) {}

}  // namespace

class Train : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    char tmpl[] = "/tmp/flipguard-train-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir); }
  fs::path dir;
};

TEST_F(Train, LearnsASimpleTask) {
  const Dataset train = bands(512, 1), test = bands(200, 2);
  Network net = build_zoo("mnist-cnn-opt", 3);
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 32;
  o.warmup_epochs = 0.2;
  const EpochReport r = train_network(net, train, test, o, quiet);
  EXPECT_GT(r.test_accuracy, 0.9);
  // The returned network has the normalization folded in: its own float pass agrees.
  EXPECT_DOUBLE_EQ(float_accuracy(net, test.images, test.labels), r.test_accuracy);
}

TEST_F(Train, ResumedRunEqualsUninterruptedRun) {
  const Dataset train = bands(256, 4), test = bands(64, 5);
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 32;
  o.augment = true;
  o.checkpoint = (dir / "straight.ckpt").string();
  Network straight = build_zoo("mnist-cnn", 7);
  train_network(straight, train, test, o, quiet);

  // Interrupted after the first epoch: a run with the same options whose checkpoint is the one
  // written after epoch 1, continued with --resume.
  TrainOptions first = o;
  first.checkpoint = (dir / "resumed.ckpt").string();
  first.epochs = 2;
  Network partial = build_zoo("mnist-cnn", 7);
  {
    // Stop after epoch 1 by training a copy whose log throws once epoch 1 is reported.
    try {
      train_network(partial, train, test, first, [](const std::string& line) {
        if (line.rfind("epoch 1/2 done", 0) == 0) throw std::runtime_error("killed");
      });
      FAIL() << "the run was not interrupted";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "killed");
    }
  }
  TrainOptions resume = first;
  resume.resume = true;
  Network resumed = build_zoo("mnist-cnn", 7);
  train_network(resumed, train, test, resume, quiet);
  EXPECT_TRUE(same_weights(straight, resumed));
}

TEST_F(Train, ResumeRefusesACheckpointOfOtherOptions) {
  const Dataset train = bands(64, 4), test = bands(16, 5);
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 32;
  o.checkpoint = (dir / "a.ckpt").string();
  Network net = build_zoo("mnist-cnn", 7);
  train_network(net, train, test, o, quiet);
  TrainOptions other = o;
  other.resume = true;
  other.lr = 0.01;
  Network again = build_zoo("mnist-cnn", 7);
  try {
    train_network(again, train, test, other, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("other options"), std::string::npos) << e.what();
  }
}

TEST_F(Train, SameSeedSameWeights) {
  const Dataset train = bands(128, 8), test = bands(16, 9);
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 32;
  Network a = build_zoo("mnist-cnn-opt", 1), b = build_zoo("mnist-cnn-opt", 1);
  train_network(a, train, test, o, quiet);
  train_network(b, train, test, o, quiet);
  EXPECT_TRUE(same_weights(a, b));
}

// A shift without flips moves a single lit pixel by at most `pad` pixels each way, never
// mirrors it, and keeps it whole; the same generator seed gives the same batch.
TEST(Augment, ShiftMovesImagesByAtMostThePadding) {
  auto x = torch::zeros({64, 1, 28, 28});
  x.select(2, 10).select(2, 6).fill_(1.0f);  // pixel (y 10, x 6) in every image
  auto gen = at::detail::createCPUGenerator(3);
  const auto y = augment_batch(x, gen, 2, false);
  std::set<std::pair<int64_t, int64_t>> seen;
  for (int64_t i = 0; i < 64; ++i) {
    const auto nz = y[i][0].nonzero();
    ASSERT_EQ(nz.size(0), 1) << "image " << i;
    const int64_t py = nz[0][0].item<int64_t>(), px = nz[0][1].item<int64_t>();
    EXPECT_LE(std::abs(py - 10), 2);
    EXPECT_LE(std::abs(px - 6), 2) << "a mirrored pixel would be near x = 21";
    seen.insert({py, px});
  }
  EXPECT_GT(seen.size(), 10u) << "offsets vary";
  auto gen2 = at::detail::createCPUGenerator(3);
  EXPECT_TRUE(augment_batch(x, gen2, 2, false).equal(y));
  // With flips, some images are mirrored: x = 27 - 6 -+ shift.
  auto gen3 = at::detail::createCPUGenerator(3);
  const auto f = augment_batch(x, gen3, 2, true);
  int mirrored = 0;
  for (int64_t i = 0; i < 64; ++i) mirrored += f[i][0].nonzero()[0][1].item<int64_t>() > 14;
  EXPECT_GT(mirrored, 10);
  EXPECT_LT(mirrored, 54);
}
