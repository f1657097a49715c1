// The block graph, the model zoo of Table I and the model file format.
#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"

#include <cstdio>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

std::vector<Shape> site_shapes(const Network& net) {
  const auto shapes = net.shapes();
  std::vector<Shape> out;
  for (int s : net.sites()) out.push_back(shapes[s]);
  return out;
}

void write_all(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST(Zoo, MnistCnnHasTheSitesOfTableI) {
  const Network net = build_zoo("mnist-cnn");
  const std::vector<Shape> expected{{16, 28, 28}, {64, 14, 14}, {64, 14, 14}, {64, 1, 1}};
  EXPECT_EQ(site_shapes(net), expected);
  EXPECT_EQ(net.num_classes(), 10);
}

// Not in Table I: the CIFAR-10 network's convolutions on MNIST's images, a distillation teacher.
TEST(Zoo, MnistTeacherIsTheCifarNetworkOnMnistImages) {
  const Network net = build_zoo("mnist-teacher");
  const std::vector<Shape> expected{{32, 28, 28}, {32, 14, 14}, {64, 14, 14}, {64, 7, 7},
                                    {128, 7, 7},  {128, 7, 7},  {128, 1, 1}};
  EXPECT_EQ(site_shapes(net), expected);
  EXPECT_EQ(net.input, (Shape{1, 28, 28}));
  EXPECT_EQ(net.num_classes(), 10);
  EXPECT_EQ(net.input_mean, build_zoo("mnist-cnn").input_mean);
  EXPECT_EQ(net.input_std, build_zoo("mnist-cnn").input_std);
}

TEST(Zoo, OptimizedFormsMoveTheGlobalPoolingBehindThe1x1Conv) {
  const Network mnist = build_zoo("mnist-cnn-opt");
  const std::vector<Shape> m{{16, 28, 28}, {64, 14, 14}, {64, 14, 14}};
  EXPECT_EQ(site_shapes(mnist), m);
  const Block& last = mnist.blocks.back();
  EXPECT_EQ(last.kernel, 1);
  EXPECT_EQ(last.post.kind, PoolKind::GlobalAvg);
  EXPECT_FALSE(last.relu);

  const Network cifar = build_zoo("cifar-cnn");
  const std::vector<Shape> c{{32, 32, 32}, {32, 16, 16}, {64, 16, 16}, {64, 8, 8},
                             {128, 8, 8},  {128, 8, 8},  {128, 1, 1}};
  EXPECT_EQ(site_shapes(cifar), c);
  const Network cifar_opt = build_zoo("cifar-cnn-opt");
  EXPECT_EQ(site_shapes(cifar_opt).back(), (Shape{128, 8, 8}));
  EXPECT_EQ(cifar_opt.num_classes(), 10);
}

TEST(Zoo, ReluAfterEveryConvolutionButTheLast) {
  for (const auto& name : zoo_names()) {
    const Network net = build_zoo(name);
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      const Block& b = net.blocks[i];
      if (b.op != Op::Conv) continue;
      EXPECT_EQ(b.relu, i + 1 != net.blocks.size()) << name << " block " << b.name;
      if (b.kernel == 3) EXPECT_EQ(b.padding, 1) << name << " block " << b.name;
    }
  }
}

TEST(Zoo, UnknownArchitectureListsTheKnownOnes) {
  const std::string msg = error_of([] { build_zoo("resnet"); });
  EXPECT_NE(msg.find("'resnet'"), std::string::npos) << msg;
  for (const auto& n : zoo_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
}

// Batches bounded by memory: the zoo networks keep the batch asked for; a wide 224x224 network
// gets fewer images, and the budget is what the estimate says (outputs as float32, the largest
// exact result as float64 three times); never fewer than one image.
TEST(Network, BatchWithinAMemoryBudget) {
  const Network small = build_zoo("cifar-cnn", 1);
  EXPECT_EQ(small.batch_within(500), 500);
  Network wide;
  wide.arch = "wide";
  wide.input = {3, 224, 224};
  wide.input_mean = {0, 0, 0};
  wide.input_std = {1, 1, 1};
  Block conv;
  conv.name = "conv";
  conv.out_channels = 64;
  conv.kernel = 3;
  conv.padding = 1;
  conv.weight = torch::zeros({64, 3, 3, 3});
  conv.bias = torch::zeros({64});
  conv.relu = true;
  conv.post = PoolSpec::max(2, 2);
  wide.blocks.push_back(conv);
  Block last = conv;
  last.name = "scores";
  last.inputs = {0};
  last.out_channels = 10;
  last.kernel = 1;
  last.padding = 0;
  last.weight = torch::zeros({10, 64, 1, 1});
  last.bias = torch::zeros({10});
  last.relu = false;
  last.post = PoolSpec::global_avg();
  wide.blocks.push_back(last);
  wide.validate();
  const int64_t per_image = 3 * 224 * 224 * 8 + (64 * 112 * 112 + 10) * 4 + 64 * 224 * 224 * 8 * 3;
  EXPECT_EQ(wide.batch_within(1000), (int64_t{1} << 30) / per_image);
  EXPECT_LT(wide.batch_within(1000), 20);
  EXPECT_EQ(wide.batch_within(1000, 3 * per_image + 1), 3);
  EXPECT_EQ(wide.batch_within(1000, 1), 1);
  EXPECT_EQ(wide.batch_within(2), 2);
}

TEST(Network, ForwardAllGivesEverySiteWithItsShape) {
  const Network net = build_zoo("cifar-cnn", 3);
  auto x = torch::randn({2, 3, 32, 32});
  torch::NoGradGuard g;
  const auto outs = net.forward_all(x);
  const auto shapes = net.shapes();
  ASSERT_EQ(outs.size(), net.blocks.size());
  for (size_t i = 0; i < outs.size(); ++i)
    EXPECT_EQ(outs[i].sizes().vec(), (std::vector<int64_t>{2, shapes[i].c, shapes[i].h, shapes[i].w}));
  EXPECT_EQ(net.forward(x).sizes().vec(), (std::vector<int64_t>{2, 10}));
}

TEST(Network, OriginalAndOptimizedComputeTheSameFunctionWithTheSameWeights) {
  // Global average pooling and a 1x1 convolution are both linear, so they commute (V-E1).
  Network orig = build_zoo("mnist-cnn", 5);
  Network opt = build_zoo("mnist-cnn-opt", 6);
  for (size_t i = 0; i < 3; ++i) {
    opt.blocks[i].weight = orig.blocks[i].weight;
    opt.blocks[i].bias = orig.blocks[i].bias;
  }
  opt.blocks[3].weight = orig.blocks[4].weight;
  opt.blocks[3].bias = orig.blocks[4].bias;
  torch::NoGradGuard g;
  auto x = torch::rand({4, 1, 28, 28});
  EXPECT_TRUE(torch::allclose(orig.forward(x), opt.forward(x), 1e-4, 1e-5));
}

TEST(Network, ValidateRejectsAWrongWeightShape) {
  Network net = build_zoo("mnist-cnn");
  net.blocks[1].weight = torch::zeros({64, 8, 3, 3});
  const std::string msg = error_of([&] { net.validate(); });
  EXPECT_NE(msg.find("conv1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("64x16x3x3"), std::string::npos) << msg;
}

TEST(ModelFile, SurvivesSaveAndLoadBitForBit) {
  TempDir dir;
  Model m{build_zoo("cifar-cnn-opt", 11), std::nullopt, {{"note", "test"}}};
  QuantFormats q;
  q.input = {8, 5, true};
  for (size_t i = 0; i < m.net.blocks.size(); ++i) {
    q.act.push_back({8, static_cast<int>(i) - 2, i % 2 == 0});
    q.weight.push_back({8, 7 + static_cast<int>(i), true});
  }
  m.quant = q;
  const std::string p = dir.file("m.fgm");
  save_model(m, p);
  const Model l = load_model(p);
  EXPECT_EQ(l.net.arch, m.net.arch);
  EXPECT_EQ(l.net.input, m.net.input);
  EXPECT_EQ(l.net.input_mean, m.net.input_mean);
  EXPECT_EQ(l.net.input_std, m.net.input_std);
  ASSERT_EQ(l.net.blocks.size(), m.net.blocks.size());
  for (size_t i = 0; i < m.net.blocks.size(); ++i) {
    const Block &a = m.net.blocks[i], &b = l.net.blocks[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.inputs, b.inputs);
    EXPECT_EQ(a.relu, b.relu);
    EXPECT_EQ(a.post, b.post);
    EXPECT_EQ(a.pool, b.pool);
    if (!a.weighted()) continue;
    // Bit for bit: compare the raw float32 bytes.
    ASSERT_EQ(a.weight.sizes(), b.weight.sizes());
    EXPECT_EQ(std::memcmp(a.weight.data_ptr<float>(), b.weight.data_ptr<float>(),
                          a.weight.numel() * 4), 0);
    EXPECT_EQ(std::memcmp(a.bias.data_ptr<float>(), b.bias.data_ptr<float>(), a.bias.numel() * 4), 0);
  }
  ASSERT_TRUE(l.quant.has_value());
  EXPECT_EQ(*l.quant, q);
  EXPECT_EQ(l.meta, m.meta);
  // Saving the loaded model again gives the identical file.
  save_model(l, dir.file("again.fgm"));
  EXPECT_EQ(slurp(p), slurp(dir.file("again.fgm")));
}

TEST(ModelFile, RejectsMissingTruncatedForeignNewerAndCorruptFiles) {
  TempDir dir;
  const std::string p = dir.file("m.fgm");
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, p);
  const std::string bytes = slurp(p);

  EXPECT_NE(error_of([&] { load_model(dir.file("none.fgm")); }).find("none.fgm"), std::string::npos);

  for (size_t cut : {size_t{5}, size_t{30}, bytes.size() / 2, bytes.size() - 1}) {
    write_all(dir.file("cut.fgm"), bytes.substr(0, cut));
    const std::string msg = error_of([&] { load_model(dir.file("cut.fgm")); });
    EXPECT_NE(msg.find("cut.fgm"), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("magic") != std::string::npos)
        << "cut at " << cut << ": " << msg;
  }

  std::string foreign = bytes;
  foreign[0] = 'P';
  write_all(dir.file("foreign.fgm"), foreign);
  EXPECT_NE(error_of([&] { load_model(dir.file("foreign.fgm")); }).find("not a flipguard model"),
            std::string::npos);

  std::string newer = bytes;
  newer[8] = static_cast<char>(kModelFormatVersion + 1);
  write_all(dir.file("newer.fgm"), newer);
  const std::string msg = error_of([&] { load_model(dir.file("newer.fgm")); });
  EXPECT_NE(msg.find("version " + std::to_string(kModelFormatVersion + 1)), std::string::npos) << msg;

  std::string corrupt = bytes;
  corrupt[bytes.size() - 100] ^= 0x10;  // one bit of a weight
  write_all(dir.file("corrupt.fgm"), corrupt);
  EXPECT_NE(error_of([&] { load_model(dir.file("corrupt.fgm")); }).find("CRC"), std::string::npos);
}

TEST(ModelFile, AFailedSaveLeavesNoFileBehind) {
  TempDir dir;
  const std::string p = (dir.path / "no-such-dir" / "m.fgm").string();  // a folder that is not there
  EXPECT_THROW(save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, p), Error);
  EXPECT_FALSE(fs::exists(p));
  size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir.path)) files += e.is_regular_file();
  EXPECT_EQ(files, 0u);
}
