// The block graph, the model zoo of Table I and the model file format.
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"

#include <cstdio>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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

// Table I's chains: a ReLU after every convolution but the last. (In cifar-resnet20 the ReLU of a
// branch's second convolution sits behind the addition: Zoo.CifarResnet20HasTheShapeOfThePaper.)
TEST(Zoo, ReluAfterEveryConvolutionButTheLast) {
  for (const auto& name : zoo_names()) {
    const Network net = build_zoo(name);
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      const Block& b = net.blocks[i];
      if (b.op != Op::Conv) continue;
      if (name != "cifar-resnet20")
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

// A NaN or infinite weight is refused wherever the network is checked (built, saved, loaded,
// imported, quantized), naming the block and the count.
TEST(Network, ValidateRejectsNonFiniteWeights) {
  Network net = build_zoo("mnist-cnn");
  net.blocks[1].weight = net.blocks[1].weight.clone();
  net.blocks[1].weight.view(-1)[5] = NAN;
  net.blocks[1].weight.view(-1)[9] = INFINITY;
  const std::string msg = error_of([&] { net.validate(); });
  for (const char* part : {"block 1 'conv1'", "2 of 9216 weights", "not finite"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " not in: " << msg;
  TempDir dir;
  EXPECT_NE(error_of([&] { save_model(Model{net, std::nullopt, {}}, dir.file("nan.fgm")); })
                .find("not finite"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir.file("nan.fgm")));

  Network biased = build_zoo("mnist-cnn");
  biased.blocks[0].bias = biased.blocks[0].bias.clone();
  biased.blocks[0].bias[0] = -INFINITY;
  EXPECT_NE(error_of([&] { biased.validate(); }).find("1 of 16 biases"), std::string::npos);
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
  // A device that never ends is refused on its first bytes, not read whole.
  EXPECT_NE(error_of([&] { load_model("/dev/zero"); }).find("'/dev/zero' is not a flipguard model"),
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

// A header that asks for absurd sizes (a dimension of 4e9 or 2^40, a negative one, tensors
// bigger than the file, an input of 3x100000x100000) is refused before anything is allocated,
// even with a valid CRC-32, as a hand-made or fuzzed file would have.
TEST(ModelFile, RefusesAbsurdSizesBeforeAllocating) {
  TempDir dir;
  const std::string p = dir.file("m.fgm");
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, p);
  const std::string bytes = slurp(p);
  const size_t fixed = 8 + 4 + 8;  // magic, version, header length
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t{static_cast<unsigned char>(bytes[12 + i])} << (8 * i);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(fixed, hlen));
  auto with = [&](const nlohmann::json& h) {
    const std::string text = h.dump();
    std::string out = bytes.substr(0, 12);
    for (int i = 0; i < 8; ++i) out += static_cast<char>((text.size() >> (8 * i)) & 0xff);
    out += text + bytes.substr(fixed + hlen, bytes.size() - fixed - hlen - 4);
    const uint32_t crc = crc32_of(out.data(), out.size());
    for (int i = 0; i < 4; ++i) out += static_cast<char>((crc >> (8 * i)) & 0xff);
    write_all(dir.file("absurd.fgm"), out);
    return dir.file("absurd.fgm");
  };
  auto refused = [&](const nlohmann::json& h) {
    const std::string f = with(h);
    return error_of([&] { load_model(f); });
  };
  EXPECT_NO_THROW(load_model(with(header)));  // the file rebuilt as it was loads
  for (const int64_t d : {int64_t{4000000000}, int64_t{-16}, int64_t{1} << 40}) {
    nlohmann::json h = header;
    h["tensors"][0]["shape"][0] = d;
    const std::string msg = refused(h);
    EXPECT_NE(msg.find("dimension of " + std::to_string(d)), std::string::npos) << msg;
  }
  nlohmann::json h = header;
  h["tensors"][0]["shape"][0] = int64_t{1} << 30;
  std::string msg = refused(h);
  EXPECT_NE(msg.find("truncated: its tensors need more than"), std::string::npos) << msg;
  h = header;
  h["input"] = {3, 100000, 100000};
  msg = refused(h);
  EXPECT_NE(msg.find("expected sides of 1 to 65536"), std::string::npos) << msg;
  h["input"] = {64, 4096, 4096};
  msg = refused(h);
  EXPECT_NE(msg.find("has 1073741824 values an image; expected at most 134217728"),
            std::string::npos) << msg;
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

// ---------------------------------------------------------------------------------------------
// Residual additions, grouped convolutions and clamps (ReLU6, hardtanh).
// ---------------------------------------------------------------------------------------------

namespace {

Network graph_of(std::vector<Block> blocks, Shape input = {4, 5, 5}) {
  Network net;
  net.arch = "graph";
  net.input = input;
  net.input_mean.assign(static_cast<size_t>(input.c), 0.0);
  net.input_std.assign(static_cast<size_t>(input.c), 1.0);
  net.blocks = std::move(blocks);
  return net;
}

Block conv_of(const std::string& name, int input, int64_t in, int64_t out, int groups,
              uint64_t seed) {
  Block b;
  b.name = name;
  b.inputs = {input};
  b.out_channels = out;
  b.kernel = 3;
  b.padding = 1;
  b.groups = groups;
  auto gen = at::detail::createCPUGenerator(seed);
  b.weight = torch::randn({out, in / groups, 3, 3}, gen);
  b.bias = torch::randn({out}, gen);
  return b;
}

}  // namespace

// The float pass of an addition is the sum of its inputs; of a grouped convolution, each group
// of output channels convolves only its own group of input channels; ReLU6 and hardtanh clamp.
TEST(Graph, AdditionGroupsAndClampsComputeWhatTheySay) {
  Block dw = conv_of("dw", Block::kNetworkInput, 4, 4, 4, 1);
  dw.relu = true;
  dw.clamp_max = 6;  // ReLU6
  Block g2 = conv_of("g2", 0, 4, 6, 2, 2);
  g2.clamp_min = -1;  // hardtanh(-1, 1)
  g2.clamp_max = 1;
  Block full = conv_of("full", 0, 4, 6, 1, 3);
  Block add;
  add.name = "add";
  add.op = Op::Add;
  add.inputs = {1, 2};
  add.relu = true;
  Network net = graph_of({dw, g2, full, add});
  net.validate();
  EXPECT_EQ(net.shapes().back(), (Shape{6, 5, 5}));
  auto gen = at::detail::createCPUGenerator(9);
  const auto x = torch::randn({2, 4, 5, 5}, gen) * 4;
  const auto out = net.forward_all(x);
  // Depthwise: channel c of the output from channel c of the input alone.
  for (int64_t c = 0; c < 4; ++c) {
    auto y = torch::conv2d(x.slice(1, c, c + 1), dw.weight.slice(0, c, c + 1),
                           dw.bias.slice(0, c, c + 1), 1, 1);
    EXPECT_TRUE(torch::allclose(out[0].slice(1, c, c + 1), y.clamp(0, 6), 1e-5, 1e-5));
  }
  EXPECT_GT(out[0].max().item<double>(), 5.999);  // the clamp was reached
  // Two groups: output channels 0-2 read input channels 0-1, 3-5 read 2-3.
  for (int64_t g = 0; g < 2; ++g) {
    auto y = torch::conv2d(out[0].slice(1, 2 * g, 2 * g + 2), g2.weight.slice(0, 3 * g, 3 * g + 3),
                           g2.bias.slice(0, 3 * g, 3 * g + 3), 1, 1);
    EXPECT_TRUE(torch::allclose(out[1].slice(1, 3 * g, 3 * g + 3), y.clamp(-1, 1), 1e-5, 1e-5));
  }
  EXPECT_TRUE(torch::allclose(out[3], torch::relu(out[1] + out[2])));
  EXPECT_EQ(activate(g2, torch::tensor({-3.0, 0.5, 3.0})).sizes(), (std::vector<int64_t>{3}));
  EXPECT_TRUE(torch::equal(activate(g2, torch::tensor({-3.0, 0.5, 3.0})),
                           torch::tensor({-1.0, 0.5, 1.0})));
  EXPECT_EQ(dw.act_lo(), 0.0);
  EXPECT_EQ(dw.act_hi(), 6.0);
  EXPECT_TRUE(g2.activated());
  EXPECT_FALSE(full.activated());
}

TEST(Graph, ValidateRejectsBadAdditionsGroupsAndClamps) {
  Block a = conv_of("a", Block::kNetworkInput, 4, 4, 1, 1);
  Block b = conv_of("b", Block::kNetworkInput, 4, 6, 1, 2);
  Block add;
  add.name = "sum";
  add.op = Op::Add;
  add.inputs = {0, 1};
  EXPECT_TRUE(contains(error_of([&] { graph_of({a, b, add}).validate(); }),
                       "'sum': added inputs differ in shape: 4x5x5 and 6x5x5"));
  add.inputs = {0};
  EXPECT_TRUE(contains(error_of([&] { graph_of({a, add}).validate(); }), "two or more inputs"));
  Block g = conv_of("g", Block::kNetworkInput, 4, 6, 1, 3);
  g.groups = 4;  // 6 output channels are not 4 groups
  g.weight = torch::zeros({6, 1, 3, 3});
  EXPECT_TRUE(contains(error_of([&] { graph_of({g}).validate(); }), "4 groups do not divide"));
  g.groups = 2;  // weight must be 6 x 2 x 3 x 3
  EXPECT_TRUE(contains(error_of([&] { graph_of({g}).validate(); }), "6x2x3x3"));
  Block pool;
  pool.name = "p";
  pool.op = Op::Pool;
  pool.pool = PoolSpec::global_avg();
  pool.groups = 2;
  EXPECT_TRUE(contains(error_of([&] { graph_of({pool}).validate(); }), "groups 2"));
  a.relu = true;
  a.clamp_max = -1;  // relu then clamp at -1: empty range
  EXPECT_TRUE(contains(error_of([&] { graph_of({a}).validate(); }), "activation bounds [0, -1]"));
}

// Version 2 files hold additions, groups and clamps (an infinite bound as null); a network
// without them is still written as version 1, so older readers load it.
TEST(ModelFile, AdditionsGroupsAndClampsSurviveSaveAndLoad) {
  TempDir dir;
  Block dw = conv_of("dw", Block::kNetworkInput, 4, 4, 4, 1);
  dw.relu = true;
  dw.clamp_max = 6;
  Block h = conv_of("h", 0, 4, 4, 2, 2);
  h.clamp_min = -1;
  Block add;
  add.name = "add";
  add.op = Op::Add;
  add.inputs = {0, 1, -1};
  const Model m{graph_of({dw, h, add}), std::nullopt, {}};
  save_model(m, dir.file("v2.fgm"));
  const std::string bytes = slurp(dir.file("v2.fgm"));
  EXPECT_EQ(bytes[8], 2);
  EXPECT_TRUE(contains(bytes, "\"clamp\":[-1.0,null]"));
  const Model l = load_model(dir.file("v2.fgm"));
  ASSERT_EQ(l.net.blocks.size(), 3u);
  EXPECT_EQ(l.net.blocks[0].groups, 4);
  EXPECT_EQ(l.net.blocks[0].act_hi(), 6.0);
  EXPECT_EQ(l.net.blocks[1].clamp_min, -1.0);
  EXPECT_TRUE(std::isinf(l.net.blocks[1].clamp_max));
  EXPECT_EQ(l.net.blocks[2].op, Op::Add);
  EXPECT_EQ(l.net.blocks[2].inputs, (std::vector<int>{0, 1, -1}));
  auto x = torch::randn({1, 4, 5, 5});
  EXPECT_TRUE(torch::equal(l.net.forward(x), m.net.forward(x)));
  save_model(l, dir.file("again.fgm"));
  EXPECT_EQ(slurp(dir.file("again.fgm")), bytes);
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, dir.file("v1.fgm"));
  EXPECT_EQ(slurp(dir.file("v1.fgm"))[8], 1);
}

// ResNet-20 (He et al. 2016, 4.2): 19 convolutions + 2 projections, 9 additions; 0.27 M weights.
TEST(Zoo, CifarResnet20HasTheShapeOfThePaper) {
  const Network net = build_zoo("cifar-resnet20");
  int convs = 0, adds = 0, projections = 0;
  int64_t weights = 0;
  for (const Block& b : net.blocks) {
    convs += b.op == Op::Conv && b.kernel == 3;
    projections += b.op == Op::Conv && b.kernel == 1;
    adds += b.op == Op::Add;
    if (b.weighted()) weights += b.weight.numel();
  }
  EXPECT_EQ(convs, 19);
  EXPECT_EQ(projections, 2);
  EXPECT_EQ(adds, 9);
  EXPECT_NEAR(static_cast<double>(weights), 0.27e6, 0.01e6);
  const auto shapes = net.shapes();
  EXPECT_EQ(shapes[0], (Shape{16, 32, 32}));
  EXPECT_EQ(shapes[shapes.size() - 3], (Shape{64, 8, 8}));
  EXPECT_EQ(shapes.back(), (Shape{10, 1, 1}));
  // The first addition adds its branch to the stem's output: an identity shortcut. A ReLU after
  // the stem, every first convolution of a unit and every addition; none after a unit's second
  // convolution or a projection (their sum is rectified).
  EXPECT_EQ(net.blocks[3].inputs, (std::vector<int>{2, 0}));
  for (const Block& b : net.blocks) {
    const bool tail = b.name.find("conv2") != std::string::npos ||
                      b.name.find("shortcut") != std::string::npos;
    if (b.op == Op::Conv || b.op == Op::Add) EXPECT_EQ(b.relu, !tail) << b.name;
  }
}
