// Training: it learns, it is seeded, and a resumed run equals an uninterrupted one.
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/train.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include "synthetic.hpp"

#include <cmath>
#include <map>
#include <set>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace flipguard;
namespace fs = std::filesystem;

namespace {

bool same_weights(const Network& a, const Network& b) {
  for (size_t i = 0; i < a.blocks.size(); ++i)
    if (a.blocks[i].weighted() && (!torch::equal(a.blocks[i].weight, b.blocks[i].weight) ||
                                   !torch::equal(a.blocks[i].bias, b.blocks[i].bias)))
      return false;
  return true;
}

void quiet(const std::string&) {}

TrainOptions levels_options() {
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 32;
  o.warmup_epochs = 0.2;
  return o;
}

/// mnist-cnn-opt (seed 3) trained for 3 epochs on a brightness_levels set: > 90 % there.
Network trained_on_levels(const Dataset& train, const Dataset& test) {
  Network net = build_zoo("mnist-cnn-opt", 3);
  train_network(net, train, test, levels_options(), quiet);
  return net;
}

}  // namespace

class Train : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    char tmpl[] = "/tmp/flipguard-train-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir); }
  /// A one-epoch run of mnist-cnn (seed 7) on `train`, done, so that its checkpoint `name` exists.
  TrainOptions checkpointed_run(const std::string& name, const Dataset& train, const Dataset& test) {
    TrainOptions o;
    o.epochs = 1;
    o.batch_size = 32;
    o.checkpoint = (dir / name).string();
    Network net = build_zoo("mnist-cnn", 7);
    train_network(net, train, test, o, quiet);
    return o;
  }
  fs::path dir;
};

TEST_F(Train, LearnsASimpleTask) {
  const Dataset train = synthetic::brightness_levels(512, 1), test = synthetic::brightness_levels(200, 2);
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

TEST_F(Train, ADivergingRunStopsWithAClearErrorAndWritesNothing) {
  const Dataset train = synthetic::brightness_levels(256, 1), test = synthetic::brightness_levels(64, 2);
  TrainOptions o = levels_options();
  o.lr = 1e12;  // a rate no network survives
  o.warmup_epochs = 0;
  o.batchnorm = false;
  o.checkpoint = (dir / "run.ckpt").string();
  Network net = build_zoo("mnist-cnn-opt", 3);
  try {
    train_network(net, train, test, o, quiet);
    ADD_FAILURE() << "training at lr 1e12 passed";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* part :
         {"diverged", "of epoch 1", "not finite", "lower lr (learning rate) than 1e+12"})
      EXPECT_NE(m.find(part), std::string::npos) << part << " not in: " << m;
  }
  // It stopped within the first epoch, before any checkpoint was written.
  EXPECT_FALSE(fs::exists(o.checkpoint));
}

TEST_F(Train, ResumedRunEqualsUninterruptedRun) {
  const Dataset train = synthetic::brightness_levels(256, 4), test = synthetic::brightness_levels(64, 5);
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
  const Dataset train = synthetic::brightness_levels(64, 4), test = synthetic::brightness_levels(16, 5);
  const TrainOptions o = checkpointed_run("a.ckpt", train, test);
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

/// The tensors of a training checkpoint by name.
std::map<std::string, torch::Tensor> checkpoint_tensors(const fs::path& path,
                                                        const std::vector<std::string>& names) {
  torch::serialize::InputArchive a;
  a.load_from(path.string());
  std::map<std::string, torch::Tensor> t;
  for (const std::string& n : names) a.read(n, t[n]);
  return t;
}

// A warm restart starts from the checkpoint's weights and normalization, not from the seed's:
// at a learning rate too small to move them, the restarted run's weights are the checkpoint's
// (only the running statistics of the normalization move, as they do at any rate).
TEST_F(Train, WarmRestartStartsFromTheCheckpointsWeights) {
  const Dataset train = synthetic::brightness_levels(512, 1), test = synthetic::brightness_levels(200, 2);
  TrainOptions o = levels_options();
  o.checkpoint = (dir / "first.ckpt").string();
  Network first = build_zoo("mnist-cnn-opt", 3);
  const EpochReport trained = train_network(first, train, test, o, quiet);
  ASSERT_GT(trained.test_accuracy, 0.9);

  TrainOptions restart = o;
  restart.epochs = 1;
  restart.lr = 1e-12;
  restart.weight_decay = 0;
  restart.checkpoint = (dir / "restart.ckpt").string();
  restart.init = o.checkpoint;
  Network restarted = build_zoo("mnist-cnn-opt", 99);  // another seed: other random weights
  const EpochReport r = train_network(restarted, train, test, restart, quiet);
  EXPECT_GT(r.test_accuracy, 0.9);
  std::vector<std::string> names;
  for (size_t i = 0; i < first.blocks.size(); ++i) {
    const std::string p = "block" + std::to_string(i) + ".";
    if (first.blocks[i].weighted()) names.insert(names.end(), {p + "weight", p + "bias"});
    if (first.blocks[i].op == Op::Conv && first.blocks[i].activated())
      names.insert(names.end(), {p + "bn.gamma", p + "bn.beta"});
  }
  ASSERT_GT(names.size(), 4u);
  const auto before = checkpoint_tensors(o.checkpoint, names);
  const auto after = checkpoint_tensors(restart.checkpoint, names);
  for (const std::string& n : names)
    EXPECT_TRUE(torch::allclose(after.at(n), before.at(n), 1e-6, 1e-9)) << n;

  // The same run from the seed's weights learns nothing at that rate.
  TrainOptions fresh = restart;
  fresh.init.clear();
  fresh.checkpoint.clear();
  Network untrained = build_zoo("mnist-cnn-opt", 99);
  EXPECT_LT(train_network(untrained, train, test, fresh, quiet).test_accuracy, 0.6);

  // A restart's checkpoint resumes only a restart from the same file.
  TrainOptions resume = restart;
  resume.resume = true;
  resume.init.clear();
  Network again = build_zoo("mnist-cnn-opt", 99);
  EXPECT_THROW(train_network(again, train, test, resume, quiet), Error);
}

TEST_F(Train, WarmRestartRefusesAnotherArchitectureOrAMissingFile) {
  const Dataset train = synthetic::brightness_levels(64, 4), test = synthetic::brightness_levels(16, 5);
  const TrainOptions o = checkpointed_run("cnn.ckpt", train, test);
  auto message = [&](const std::string& arch, const std::string& init) {
    TrainOptions r = o;
    r.checkpoint.clear();
    r.init = init;
    Network other = build_zoo(arch, 7);
    try {
      train_network(other, train, test, r, quiet);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string wrong = message("mnist-cnn-opt", o.checkpoint);
  for (const char* part : {"cannot init mnist-cnn-opt", "cnn.ckpt", "checkpoint of mnist-cnn"})
    EXPECT_NE(wrong.find(part), std::string::npos) << part << " not in: " << wrong;
  const std::string missing = message("mnist-cnn", (dir / "none.ckpt").string());
  for (const char* part : {"cannot init", "none.ckpt", "does not exist"})
    EXPECT_NE(missing.find(part), std::string::npos) << part << " not in: " << missing;
}

// A training checkpoint is a LibTorch archive, read by LibTorch's reader, which is not safe on
// damaged files (docs/results/fuzzing.md): whatever the file, resume and init end in an Error
// that names it, never in a crash or an exception of LibTorch's own.
TEST_F(Train, ADamagedCheckpointIsAnErrorNamingTheFile) {
  const Dataset train = synthetic::brightness_levels(64, 4), test = synthetic::brightness_levels(16, 5);
  const TrainOptions o = checkpointed_run("good.ckpt", train, test);
  const std::string good = read_file(o.checkpoint, "checkpoint");
  auto error_of = [&](const std::string& path, bool resume) {
    TrainOptions r = o;
    r.checkpoint = resume ? path : "";
    r.init = resume ? "" : path;
    r.resume = resume;
    Network net = build_zoo("mnist-cnn", 7);
    try {
      train_network(net, train, test, r, quiet);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto expect_refused = [&](const std::string& name, const std::string& bytes, const char* why) {
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    for (bool resume : {true, false}) {
      const std::string e = error_of(path, resume);
      EXPECT_NE(e.find(name), std::string::npos) << e;
      EXPECT_NE(e.find(why), std::string::npos) << why << " not in: " << e;
    }
  };
  expect_refused("half.ckpt", good.substr(0, good.size() / 2), "not a readable training checkpoint");
  expect_refused("text.ckpt", "epoch 3", "not a readable training checkpoint");
  // Archives that fuzz_torchscript found: code that does not compile (LibTorch throws its
  // ErrorReport, no c10::Error), code on which LibTorch's type parser reads a bad pointer (a
  // crash under ASan; without it, whatever that memory holds).
  const std::string found = std::string(FLIPGUARD_SOURCE_DIR) + "/fuzz/regressions/torchscript/";
  for (const std::string name : {"code-that-does-not-compile", "type-parser-dereferences-a-bad-pointer"}) {
    const std::string bytes = read_file(found + name, "regression input");
    ASSERT_GT(bytes.size(), 1u) << name;
    expect_refused(name + ".ckpt", bytes.substr(1), "not a readable training checkpoint");
  }

  // The right options and weights, but an impossible epoch count, or no optimizer state.
  torch::serialize::InputArchive a;
  a.load_from(o.checkpoint);
  auto rewritten = [&](const torch::Tensor& epoch) {
    torch::serialize::OutputArchive w;
    for (const std::string& key : a.keys()) {
      torch::Tensor t;
      c10::IValue v;
      if (key == "epoch" || key == "optimizer") continue;
      if (a.try_read(key, t)) w.write(key, t);
      else if (a.try_read(key, v)) w.write(key, v);
    }
    w.write("epoch", epoch);
    std::ostringstream bytes;
    w.save_to(bytes);
    return bytes.str();
  };
  const std::string path = (dir / "edited.ckpt").string();
  std::ofstream(path, std::ios::binary) << rewritten(torch::tensor(int64_t{-3}));
  EXPECT_NE(error_of(path, true).find("counts -3 epochs done, expected 0 to 1"), std::string::npos)
      << error_of(path, true);
  std::ofstream(path, std::ios::binary) << rewritten(torch::tensor({1, 1}, torch::kLong));
  EXPECT_NE(error_of(path, true).find("no epoch count"), std::string::npos) << error_of(path, true);
  std::ofstream(path, std::ios::binary) << rewritten(torch::tensor(int64_t{1}));
  EXPECT_NE(error_of(path, true).find("no optimizer state"), std::string::npos) << error_of(path, true);
  // init reads the weights alone: the same file is a good warm restart.
  EXPECT_EQ(error_of(path, false), "no error");
}

TEST_F(Train, SameSeedSameWeights) {
  const Dataset train = synthetic::brightness_levels(128, 8), test = synthetic::brightness_levels(16, 9);
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

// rotate_scale against plain references: a turn by 0 degrees at scale 1 gives the image back,
// a quarter turn is torch::rot90 (counter-clockwise as shown), on square and non-square images;
// a scaling by 2 moves a lit pixel twice as far from the centre; the random form repeats with
// its generator and keeps within its bounds.
TEST(Augment, RotateScaleIsIdentityAtZeroAndRot90AtAQuarterTurn) {
  const auto x = torch::rand({3, 2, 8, 8});
  const auto ones = torch::ones({3});
  EXPECT_TRUE(torch::allclose(rotate_scale(x, torch::zeros({3}), ones), x, 1e-5, 1e-6));
  const auto q = rotate_scale(x, torch::full({3}, 90.0), ones);
  EXPECT_TRUE(torch::allclose(q, torch::rot90(x, 1, {2, 3}), 1e-5, 1e-5))
      << (q - torch::rot90(x, 1, {2, 3})).abs().max().item<float>();
  EXPECT_FALSE(torch::allclose(q, torch::rot90(x, -1, {2, 3}), 1e-3, 1e-3));
  // A half turn of a non-square image is the image flipped both ways.
  const auto r = torch::rand({2, 1, 6, 10});
  EXPECT_TRUE(torch::allclose(rotate_scale(r, torch::full({2}, 180.0), torch::ones({2})),
                              r.flip({2, 3}), 1e-5, 1e-5));
  // Scaling by 2 about the centre (3.5, 3.5 in pixel centres): output column j samples the
  // input at 3.5 + (j - 3.5) / 2, linearly between pixel centres, so a block lit at rows and
  // columns 4..5 becomes, along each axis, 0 0 0 .25 .75 1 1 .75 (the product of two such).
  auto b = torch::zeros({1, 1, 8, 8});
  b[0][0].slice(0, 4, 6).slice(1, 4, 6).fill_(1.0f);
  const auto s = rotate_scale(b, torch::zeros({1}), torch::full({1}, 2.0));
  const auto p = torch::tensor({0.f, 0.f, 0.f, .25f, .75f, 1.f, 1.f, .75f});
  EXPECT_TRUE(torch::allclose(s[0][0], p.unsqueeze(1) * p.unsqueeze(0), 1e-5, 1e-6)) << s;
  EXPECT_THROW(rotate_scale(x, torch::zeros({2}), ones), Error);
  EXPECT_THROW(rotate_scale(x, torch::zeros({3}), torch::zeros({3})), Error);
}

TEST(Augment, RandomRotateScaleRepeatsWithItsGeneratorAndStaysWithinItsBounds) {
  auto x = torch::zeros({32, 1, 28, 28});
  x.select(2, 14).select(2, 24).fill_(1.0f);  // 10 pixels right of the centre (13.5, 13.5)
  auto g1 = at::detail::createCPUGenerator(5), g2 = at::detail::createCPUGenerator(5);
  const auto y = random_rotate_scale(x, g1, 10, 0.1);
  EXPECT_TRUE(random_rotate_scale(x, g2, 10, 0.1).equal(y));
  std::set<int64_t> rows;
  for (int64_t i = 0; i < 32; ++i) {
    // The brightest pixel stays within 10 degrees and 10 % of where it was: its distance from
    // the centre 10.5 * (0.9 .. 1.1) and its angle within 10 degrees (+-1.7 rows at ~10 px).
    const auto img = y[i][0];
    const int64_t at = img.argmax().item<int64_t>(), py = at / 28, px = at % 28;
    const double dy = py - 13.5, dx = px - 13.5, r = std::hypot(dx, dy);
    EXPECT_GE(r, 10.5 * 0.9 - 1) << "image " << i;
    EXPECT_LE(r, 10.5 * 1.1 + 1) << "image " << i;
    EXPECT_LE(std::abs(std::atan2(dy, dx)) * 180 / M_PI, 10 + 6) << "image " << i;
    rows.insert(py);
  }
  EXPECT_GE(rows.size(), 3u) << "angles vary";
  auto g3 = at::detail::createCPUGenerator(5);
  EXPECT_TRUE(torch::allclose(random_rotate_scale(x, g3, 0, 0), x, 1e-5, 1e-6));
  auto g4 = at::detail::createCPUGenerator(5);
  EXPECT_THROW(random_rotate_scale(x, g4, 200, 0), Error);
  EXPECT_THROW(random_rotate_scale(x, g4, 10, 1.5), Error);
}

// Quantization-aware training: the forward pass is the integer-exact one, gradients pass the
// rounding straight through, and fine-tuning a quantized model keeps it working.

TEST(Qat, FakeQuantizeRoundsLikeTheCodesAndPassesTheGradientWhereNotSaturated) {
  const FixedPoint f{8, 4, true};  // step 1/16, range [-8, 127/16]
  auto x = torch::tensor({0.03125, -0.03125, 1.0 / 3, 7.9375, 9.0, -8.0, -9.5},
                         torch::kFloat32).set_requires_grad(true);
  auto y = fake_quantize(x, f);
  // Half up: 0.5 LSB -> 1 LSB, -0.5 LSB -> 0; 1/3 -> 5/16; saturation at both ends.
  const std::vector<float> expect{0.0625f, 0.0f, 0.3125f, 7.9375f, 7.9375f, -8.0f, -8.0f};
  for (size_t i = 0; i < expect.size(); ++i) EXPECT_EQ(y[i].item<float>(), expect[i]) << i;
  EXPECT_TRUE(torch::equal(y.detach(), (to_codes(x.detach(), f) / 16).to(torch::kFloat32)));
  y.sum().backward();
  const std::vector<float> grad{1, 1, 1, 1, 0, 1, 0};
  for (size_t i = 0; i < grad.size(); ++i) EXPECT_EQ(x.grad()[i].item<float>(), grad[i]) << i;
}

TEST(Qat, ForwardIsTheIntegerExactPassOnTheReferenceModel) {
  torch::set_num_threads(1);
  const Model m = load_model(std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-opt-mnist-q8.fgm");
  ASSERT_TRUE(m.quant.has_value());
  const Dataset d = synthetic::brightness_levels(64, 7);
  const QuantizedNetwork q(m.net, *m.quant);
  const auto exact = q.scores(d.images) * q.score_scale();
  torch::NoGradGuard no_grad;
  const auto fake = quantized_training_forward(m.net, *m.quant, m.net.preprocess(d.images))
                        .to(torch::kFloat64);
  // The products of codes and their sums are exact in float32 for this network, so every site
  // gets the same codes; the class scores differ only by the float32 rounding of the last sum.
  EXPECT_LT((fake - exact).abs().max().item<double>(), 1e-5 * exact.abs().max().item<double>());
  EXPECT_TRUE(torch::equal(fake.argmax(1), exact.argmax(1)));
  // And it is not the float pass: the rounding shows.
  EXPECT_GT((m.net.forward(m.net.preprocess(d.images)).to(torch::kFloat64) - exact).abs().max().item<double>(),
            1e-3);
}

TEST(Qat, FineTuningAQuantizedModelKeepsItsAccuracy) {
  torch::set_num_threads(2);
  const Dataset train = synthetic::brightness_levels(512, 1), test = synthetic::brightness_levels(300, 2);
  const Network net = trained_on_levels(train, test);
  QuantOptions qo;
  qo.calibration_images = 200;
  const QuantFormats f = calibrate(net, train.head(200).images, qo);
  const double before = QuantizedNetwork(net, f).accuracy(test.images, test.labels);
  ASSERT_GT(before, 0.5);
  TrainOptions ft;
  ft.epochs = 1;
  ft.batch_size = 32;
  ft.lr = 0.01;
  ft.warmup_epochs = 0;
  ft.batchnorm = false;
  ft.quantized = f;
  Network tuned = net.clone();
  const EpochReport r = train_network(tuned, train, test, ft, quiet);
  EXPECT_FALSE(same_weights(net, tuned));
  EXPECT_EQ(r.test_accuracy, QuantizedNetwork(tuned, f).accuracy(test.images, test.labels));
  EXPECT_GE(r.test_accuracy, before - 0.05);
  EXPECT_GT(r.train_accuracy, 0.5);
  // Batch normalization cannot be combined with fixed formats.
  ft.batchnorm = true;
  EXPECT_THROW(train_network(tuned, train, test, ft, quiet), Error);
}

// The distillation loss against a plain double-precision computation of
// T² · mean_n Σ_k p_k (log p_k − log q_k), p = softmax(teacher / T), q = softmax(student / T).
TEST(Distill, LossIsTheKullbackLeiblerDivergenceTimesTSquared) {
  torch::manual_seed(3);
  const auto student = (torch::randn({4, 5}) * 3).set_requires_grad(true);
  const auto teacher = torch::randn({4, 5}) * 3;
  for (double temp : {1.0, 2.5}) {
    double want = 0;
    auto s = student.detach().to(torch::kFloat64), t = teacher.to(torch::kFloat64);
    for (int64_t n = 0; n < 4; ++n) {
      double zs = 0, zt = 0;
      for (int64_t k = 0; k < 5; ++k) {
        zs += std::exp(s[n][k].item<double>() / temp);
        zt += std::exp(t[n][k].item<double>() / temp);
      }
      for (int64_t k = 0; k < 5; ++k) {
        const double p = std::exp(t[n][k].item<double>() / temp) / zt;
        const double q = std::exp(s[n][k].item<double>() / temp) / zs;
        want += p * (std::log(p) - std::log(q));
      }
    }
    want = want / 4 * temp * temp;
    const auto loss = distillation_loss(student, teacher, temp);
    EXPECT_NEAR(loss.item<double>(), want, 1e-5 * std::max(1.0, want)) << "T = " << temp;
    EXPECT_GT(want, 0.1);
  }
  // Zero where the student equals the teacher, and the gradient reaches only the student.
  EXPECT_NEAR(distillation_loss(teacher, teacher, 1.0).item<double>(), 0.0, 1e-6);
  const auto t2 = teacher.clone().set_requires_grad(true);
  distillation_loss(student, t2, 1.0).backward();
  EXPECT_TRUE(student.grad().defined());
  EXPECT_GT(student.grad().abs().sum().item<double>(), 0);
  EXPECT_FALSE(t2.grad().defined());
  EXPECT_THROW(distillation_loss(student, teacher.slice(1, 0, 4), 1.0), Error);
  EXPECT_THROW(distillation_loss(student, teacher, 0.0), Error);
}

// With a teacher, training follows the teacher's answers, not the labels: a student trained on
// images whose labels are all wrong (shifted by one class) still learns the task the teacher
// knows, while the same run on the labels learns the shifted ones.
TEST(Distill, StudentLearnsTheTeachersAnswersNotTheLabels) {
  torch::set_num_threads(2);
  const Dataset train = synthetic::brightness_levels(512, 1), test = synthetic::brightness_levels(300, 2);
  const Network teacher = trained_on_levels(train, test);
  const TrainOptions o = levels_options();
  ASSERT_GT(float_accuracy(teacher, test.images, test.labels), 0.9);

  Dataset wrong = train;
  wrong.labels = (train.labels + 1).remainder(10);
  TrainOptions d = o;
  d.teacher = teacher;
  d.temperature = 2;
  Network student = build_zoo("mnist-cnn-opt", 11), plain = build_zoo("mnist-cnn-opt", 11);
  const EpochReport r = train_network(student, wrong, Dataset{}, d, quiet);
  train_network(plain, wrong, Dataset{}, o, quiet);
  EXPECT_GT(float_accuracy(student, test.images, test.labels), 0.9);
  EXPECT_LT(r.train_accuracy, 0.5);  // logged against the (wrong) labels
  EXPECT_LT(float_accuracy(plain, test.images, test.labels), 0.5);
  // A teacher with another number of classes is refused.
  Network other = build_zoo("mnist-cnn-opt", 3);
  other.blocks.back().weight = other.blocks.back().weight.slice(0, 0, 5);
  other.blocks.back().bias = other.blocks.back().bias.slice(0, 0, 5);
  other.blocks.back().out_channels = 5;
  d.teacher = other;
  EXPECT_THROW(train_network(student, wrong, Dataset{}, d, quiet), Error);
  // So is one that takes images of another shape.
  d.teacher = build_zoo("cifar-cnn", 3);
  std::string msg;
  try {
    train_network(student, wrong, Dataset{}, d, quiet);
    ADD_FAILURE() << "a teacher for 3x32x32 images was accepted";
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("3x32x32"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1x28x28"), std::string::npos) << msg;
}

// A teacher with its own input normalization is given the student's batch as it would have
// pre-processed the same images itself.
TEST(Distill, RenormalizeGivesTheTeacherItsOwnPreprocessing) {
  Network student = build_zoo("cifar-cnn", 1), teacher = build_zoo("cifar-cnn", 2);
  teacher.input_mean = {0.5, 0.25, 0.0};
  teacher.input_std = {0.5, 2.0, 1.0};
  const auto images = torch::randint(0, 256, {4, 3, 32, 32}, torch::kUInt8);
  const auto x = student.preprocess(images);
  EXPECT_TRUE(torch::allclose(renormalize(x, student, teacher), teacher.preprocess(images), 1e-5,
                              1e-5));
  EXPECT_TRUE(renormalize(x, student, student).is_same(x));  // same normalization: untouched
  EXPECT_THROW(renormalize(x, student, build_zoo("mnist-cnn")), Error);
}

TEST(Augment, PresetsByNameAndAnUnknownOneListsTheKnown) {
  EXPECT_EQ(augment_modes(), (std::vector<std::string>{"auto", "on", "shift", "affine", "off"}));
  const TrainOptions d;
  TrainOptions o;
  set_augment("auto", "cifar10", o);
  EXPECT_TRUE(o.augment);
  EXPECT_EQ(o.augment_pad, d.augment_pad);
  EXPECT_EQ(o.augment_flip, d.augment_flip);
  set_augment("auto", "mnist", o);
  EXPECT_FALSE(o.augment);
  set_augment("shift", "mnist", o);
  EXPECT_TRUE(o.augment);
  EXPECT_EQ(o.augment_pad, 2);
  EXPECT_FALSE(o.augment_flip);
  EXPECT_FALSE(o.rotates());
  set_augment("affine", "mnist", o);
  EXPECT_EQ(o.augment_degrees, 10);
  EXPECT_EQ(o.augment_scale, 0.1);
  set_augment("off", "cifar10", o);
  EXPECT_FALSE(o.augment);
  EXPECT_FALSE(o.rotates());
  try {
    set_augment("elastic", "mnist", o);
    ADD_FAILURE() << "an unknown mode passed";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* part : {"elastic", "auto, on, shift, affine, off"})
      EXPECT_NE(m.find(part), std::string::npos) << part << " not in: " << m;
  }
}
