/// \file
/// Tests of the TorchScript import and the state-dict export (src/nn/torchscript.cpp) on modules
/// that PyTorch itself traces and scripts (tests/torchscript/make_models.py, run with Debian's
/// python3-torch, which `./run setup` installs): the imported model's class scores must be the
/// ones LibTorch computes by running the module, and an exported state dict must load into the
/// eager network in Python and give the flipguard model's class scores.
#include <gtest/gtest.h>

#include "helpers.hpp"

#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <tuple>

#include "flipguard/error.hpp"
#include "flipguard/model_file.hpp"
#include "flipguard/torchscript.hpp"

namespace fs = std::filesystem;
using namespace flipguard::test;
using flipguard::Block;
using flipguard::ImportOptions;
using flipguard::Model;
using flipguard::Op;
using flipguard::PoolKind;
using flipguard::Shape;

namespace {

const std::string kScripts = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/torchscript";

/// The modules of make_models.py, written once for all tests into a temporary folder.
class TorchScript : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string pattern = (fs::temp_directory_path() / "flipguard_test_ts_XXXXXX").string();
    ASSERT_TRUE(mkdtemp(pattern.data()));
    dir_ = pattern;
    const Result r = run_shell("/usr/bin/python3 " + kScripts + "/make_models.py " + dir_);
    ASSERT_EQ(r.status, 0) << "make_models.py failed (python3-torch missing? ./run setup "
                              "installs it):\n"
                           << r.output;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  static std::string file(const std::string& name) { return dir_ + "/" + name; }

  static ImportOptions options(Shape input) {
    ImportOptions o;
    o.input = input;
    o.mean.assign(input.c, 0.0);
    o.std.assign(input.c, 1.0);
    return o;
  }

  /// Largest difference between the module's output, run by LibTorch, and the model's.
  static double difference(const std::string& module_file, const Model& m, int64_t n) {
    torch::jit::Module module = torch::jit::load(module_file);
    module.eval();
    torch::NoGradGuard no_grad;
    torch::manual_seed(7);
    const Shape& s = m.net.input;
    const torch::Tensor x = torch::randn({n, s.c, s.h, s.w}) * 2;
    const torch::Tensor expected = module.forward({x}).toTensor();
    const torch::Tensor got = m.net.forward(x);
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_GT(expected.abs().max().item<double>(), 1e-3);  // the comparison is not of zeros
    return (got - expected).abs().max().item<double>();
  }

  /// The class scores on `x` of the eager network `python_class` (check_state_dict.py) with
  /// `m`'s exported state dict loaded strictly.
  static torch::Tensor scores_in_python(const Model& m, const std::string& python_class,
                                        const torch::Tensor& x, const std::string& stem) {
    const std::string dict = file(stem + ".pt"), inputs = file(stem + "_in.pt"),
                      outputs = file(stem + "_out.pt");
    flipguard::export_state_dict(m, dict);
    {
      const std::vector<char> bytes = torch::jit::pickle_save(x);
      std::ofstream(inputs, std::ios::binary).write(bytes.data(), bytes.size());
    }
    const Result r = run_shell("/usr/bin/python3 " + kScripts + "/check_state_dict.py " +
                               python_class + " " + dict + " " + inputs + " " + outputs);
    EXPECT_EQ(r.status, 0) << r.output;
    if (r.status != 0) return {};
    std::ifstream in(outputs, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
    return torch::jit::pickle_load(bytes).toTensor();
  }

  static std::string dir_;
};

std::string TorchScript::dir_;

const Block& block(const Model& m, const std::string& name) {
  for (const Block& b : m.net.blocks)
    if (b.name == name) return b;
  throw std::runtime_error("no block " + name);
}

TEST_F(TorchScript, EveryOperationTracedAndScriptedGivesTheModulesScores) {
  for (const char* name : {"every_op_traced.pt", "every_op_scripted.pt"}) {
    SCOPED_TRACE(name);
    const Model m = flipguard::import_torchscript(file(name), options({3, 20, 20}));
    EXPECT_LT(difference(file(name), m, 16), 1e-5);
    // The structure: conv + folded batch norm + ReLU + max pooling (ceil_mode) in one block,
    // the two branches and their concatenation with the average pooling behind it, the
    // adaptive pooling to 2x2 as a 2x2 average pooling, the identity one gone.
    ASSERT_EQ(m.net.blocks.size(), 8u);
    const Block& stem = block(m, "stem.0");
    EXPECT_TRUE(stem.relu);
    EXPECT_EQ(stem.post.kind, PoolKind::Max);
    EXPECT_EQ(stem.post.kernel, 3);
    EXPECT_TRUE(stem.post.ceil_mode);
    EXPECT_EQ(block(m, "right").dilation, 2);
    EXPECT_EQ(block(m, "right").padding, 2);
    EXPECT_EQ(m.net.blocks[3].op, Op::Concat);
    EXPECT_EQ(m.net.blocks[3].inputs, (std::vector<int>{1, 2}));
    EXPECT_EQ(m.net.blocks[3].post.kind, PoolKind::Avg);
    EXPECT_EQ(m.net.blocks[5].op, Op::Pool);
    EXPECT_EQ(m.net.blocks[5].pool.kind, PoolKind::Avg);
    EXPECT_EQ(m.net.blocks[5].pool.kernel, 2);
    EXPECT_EQ(block(m, "head.1").op, Op::Linear);
    EXPECT_EQ(m.net.shapes().back(), (Shape{5, 1, 1}));
    const auto& meta = m.meta["torchscript"]["blocks"];
    EXPECT_EQ(meta["stem.0"]["weight"], "stem.0.weight");
    EXPECT_TRUE(meta["stem.0"]["bias"].is_null());
    EXPECT_EQ(meta["stem.0"]["batch_norm"]["running_var"], "stem.1.running_var");
    EXPECT_EQ(meta["down"]["batch_norm"]["num_batches_tracked_value"], 7);
    // The model survives its file.
    const std::string saved = file(std::string(name) + ".fgm");
    flipguard::save_model(m, saved);
    EXPECT_LT(difference(file(name), flipguard::load_model(saved), 4), 1e-5);
  }
}

TEST_F(TorchScript, SqueezeNetLayoutImportsWithFireModulesAsConcatenations) {
  const Model m = flipguard::import_torchscript(file("squeezenet_traced.pt"),
                                                options({3, 224, 224}));
  EXPECT_LT(difference(file("squeezenet_traced.pt"), m, 2), 1e-4);
  ASSERT_EQ(m.net.blocks.size(), 34u);  // conv, 8 x (squeeze, expand1x1, expand3x3, cat), conv
  EXPECT_EQ(m.net.sites().size(), 33u);
  const auto shapes = m.net.shapes();
  EXPECT_EQ(shapes[0], (Shape{64, 55, 55}));  // conv 3x3 stride 2 + ReLU + max pool, ceil_mode
  EXPECT_EQ(block(m, "features.3.cat").op, Op::Concat);
  EXPECT_EQ(shapes[8], (Shape{128, 27, 27}));  // features.4.cat + max pool
  const Block& last = m.net.blocks.back();
  EXPECT_EQ(last.name, "classifier.1");
  EXPECT_TRUE(last.relu);
  EXPECT_EQ(last.post.kind, PoolKind::GlobalAvg);
  EXPECT_EQ(m.net.num_classes(), 1000);
}

TEST_F(TorchScript, ResidualDepthwiseAndClampsTracedAndScriptedGiveTheModulesScores) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (const char* name : {"residual_traced.pt", "residual_scripted.pt"}) {
    SCOPED_TRACE(name);
    const Model m = flipguard::import_torchscript(file(name), options({3, 16, 16}));
    EXPECT_LT(difference(file(name), m, 16), 1e-5);
    ASSERT_EQ(m.net.blocks.size(), 15u);
    const auto& blocks = m.net.blocks;
    // The identity shortcut (in place, ReLU behind), the projection shortcut, the linear
    // bottleneck's sum (no ReLU).
    for (auto [i, inputs, relu] :
         {std::tuple{3, std::vector<int>{2, 0}, true}, std::tuple{7, std::vector<int>{5, 6}, true},
          std::tuple{11, std::vector<int>{7, 10}, false}}) {
      EXPECT_EQ(blocks[i].op, Op::Add) << i;
      EXPECT_EQ(blocks[i].inputs, inputs) << i;
      EXPECT_EQ(blocks[i].relu, relu) << i;
      EXPECT_FALSE(blocks[i].clamps()) << i;
    }
    EXPECT_TRUE(blocks[1].relu);  // F.relu on the conv + batch norm
    EXPECT_TRUE(blocks[2].plain());
    // nn.ReLU6 (hardtanh_(x, 0, 6)) and F.relu6 (relu6) both become relu + clamp_max 6.
    for (const char* relu6 : {"expand.0.0", "pointwise.0"}) {
      EXPECT_TRUE(block(m, relu6).relu) << relu6;
      EXPECT_EQ(block(m, relu6).clamp_min, -kInf) << relu6;
      EXPECT_EQ(block(m, relu6).clamp_max, 6) << relu6;
    }
    const Block& dw = block(m, "depthwise.0");
    EXPECT_EQ(dw.groups, 32);
    EXPECT_EQ(dw.weight.sizes(), (std::vector<int64_t>{32, 1, 3, 3}));
    EXPECT_FALSE(dw.relu);  // hardtanh(-1, 1)
    EXPECT_EQ(dw.clamp_min, -1);
    EXPECT_EQ(dw.clamp_max, 1);
    EXPECT_EQ(block(m, "dw2.0").groups, 16);
    EXPECT_EQ(block(m, "dw2.0").stride, 2);
    EXPECT_EQ(block(m, "pointwise.0").post.kind, PoolKind::GlobalAvg);
    const Block& fc = blocks.back();  // torch.addmm(bias, x, weight.t())
    EXPECT_EQ(fc.name, "fc");
    EXPECT_EQ(fc.op, Op::Linear);
    const auto& meta = m.meta["torchscript"]["blocks"];
    EXPECT_EQ(meta["fc"]["bias"], "fc.bias");
    EXPECT_EQ(meta["depthwise.0"]["batch_norm"]["running_var"], "depthwise.1.running_var");
    const std::string saved = file(std::string(name) + ".fgm");
    flipguard::save_model(m, saved);
    EXPECT_LT(difference(file(name), flipguard::load_model(saved), 4), 1e-5);
  }
  // A grouped convolution that is not depthwise.
  const Model g = flipguard::import_torchscript(file("grouped_traced.pt"), options({4, 8, 8}));
  EXPECT_EQ(block(g, "conv").groups, 2);
  EXPECT_LT(difference(file("grouped_traced.pt"), g, 4), 1e-5);

  const Result r =
      run_shell(std::string(FLIPGUARD_BINARY) + " import --torchscript " +
                file("residual_traced.pt") + " --input 3x16x16 --out " + file("residual_cli.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* shown :
       {"groups=32 +clamp[-1,1] (batch norm folded)", "+relu6", "add3", "+relu"})
    EXPECT_TRUE(contains(r.output, shown)) << shown << "\n" << r.output;
}

TEST_F(TorchScript, ResidualExportLoadsStrictAndGivesTheChangedModelsScores) {
  Model m = flipguard::import_torchscript(file("residual_traced.pt"), options({3, 16, 16}));
  for (Block& b : m.net.blocks) {
    if (!b.weighted()) continue;
    b.weight = b.weight * 1.25;
    b.bias = b.bias - 0.125;
  }
  torch::manual_seed(4);
  const torch::Tensor x = torch::randn({6, 3, 16, 16});
  const torch::Tensor python = scores_in_python(m, "Residual", x, "residual_changed");
  ASSERT_TRUE(python.defined());
  torch::NoGradGuard no_grad;
  const torch::Tensor ours = m.net.forward(x);
  ASSERT_EQ(python.sizes(), ours.sizes());
  EXPECT_LT((python - ours).abs().max().item<double>(), 1e-4);
}

TEST_F(TorchScript, TorchvisionResnet18ImportsAndItsExportLoadsStrict) {
  const Result made = run_shell("/usr/bin/python3 " + kScripts + "/make_torchvision.py " + dir_);
  ASSERT_EQ(made.status, 0) << "make_torchvision.py failed (python3-torchvision missing? "
                               "./run setup installs it):\n"
                            << made.output;
  const std::string ts = file("resnet18_traced.pt");
  const Model m = flipguard::import_torchscript(ts, options({3, 224, 224}));
  const flipguard::ImportCheck check = flipguard::compare_with_torchscript(m, ts, 2, 1);
  EXPECT_LT(check.max_abs_diff, 1e-5 * check.max_abs_score);
  // 20 convolutions (batch norms folded), 8 additions, fc.
  ASSERT_EQ(m.net.blocks.size(), 29u);
  int adds = 0;
  for (const Block& b : m.net.blocks) {
    if (b.op != Op::Add) continue;
    ++adds;
    EXPECT_TRUE(b.relu) << b.name;
  }
  EXPECT_EQ(adds, 8);
  const Block& stem = block(m, "conv1");
  EXPECT_TRUE(stem.relu);
  EXPECT_EQ(stem.post.kind, PoolKind::Max);
  EXPECT_EQ(block(m, "layer1.0.add").inputs.size(), 2u);
  EXPECT_EQ(block(m, "layer4.1.add").post.kind, PoolKind::GlobalAvg);
  EXPECT_EQ(block(m, "layer2.0.add").inputs[1],
            static_cast<int>(&block(m, "layer2.0.downsample.0") - m.net.blocks.data()));

  // The export loads into torchvision's resnet18 with strict=True and gives the module's scores.
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({2, 3, 224, 224});
  const torch::Tensor python = scores_in_python(m, "torchvision.resnet18", x, "resnet18");
  ASSERT_TRUE(python.defined());
  torch::jit::Module original = torch::jit::load(ts);
  original.eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor expected = original.forward({x}).toTensor();
  ASSERT_EQ(python.sizes(), expected.sizes());
  EXPECT_LT((python - expected).abs().max().item<double>(),
            1e-5 * expected.abs().max().item<double>());
  EXPECT_TRUE(torch::equal(python.argmax(1), expected.argmax(1)));
}

TEST_F(TorchScript, UnsupportedOperationsAndBadFilesGiveClearErrors) {
  std::string e = error_of([&] {
    flipguard::import_torchscript(file("sigmoid_traced.pt"), options({3, 20, 20}));
  });
  EXPECT_TRUE(contains(e, "unsupported operation aten::sigmoid")) << e;
  EXPECT_TRUE(contains(e, "make_models.py:")) << e;  // where it is, in the user's source
  EXPECT_TRUE(contains(e, "aten::conv2d")) << e;     // and what is supported
  e = error_of([&] {
    flipguard::import_torchscript(file("alpha_add_traced.pt"), options({3, 16, 16}));
  });
  EXPECT_TRUE(contains(e, "aten::add at make_models.py:")) << e;
  EXPECT_TRUE(contains(e, "alpha = 2 is not supported; expected 1")) << e;
  e = error_of([&] {
    flipguard::import_torchscript(file("aliased_add_scripted.pt"), options({3, 16, 16}));
  });
  EXPECT_TRUE(contains(e, "adds into a tensor that aten::add at make_models.py:")) << e;
  e = error_of([&] {
    flipguard::import_torchscript(file("every_op_traced.pt"), options({3, 24, 24}));
  });
  // 24x24 reaches the adaptive pooling to 2x2 as 5x5, which no plain pooling gives.
  EXPECT_TRUE(contains(e, "is not a plain average pooling")) << e;
  {
    std::ofstream(file("garbage.pt")) << "not a zip archive";
  }
  e = error_of([&] { flipguard::import_torchscript(file("garbage.pt"), options({3, 20, 20})); });
  EXPECT_TRUE(contains(e, "cannot read TorchScript file")) << e;
  e = error_of([&] { flipguard::import_torchscript(file("missing.pt"), options({3, 20, 20})); });
  EXPECT_TRUE(contains(e, "not found")) << e;
}

// Archives that fuzz_torchscript damaged (fuzz/regressions/torchscript: a first byte that picks
// the input shape, then the .pt file): code that does not compile, a version record that is no
// number, and code on which LibTorch 1.13's own type parser crashes (SIGSEGV), which the import
// survives by reading the file in a child process first. Each is an Error naming the file.
TEST(TorchScriptDamaged, ArchivesAreErrorsNotCrashes) {
  const std::string dir = std::string(FLIPGUARD_SOURCE_DIR) + "/fuzz/regressions/torchscript";
  const TempDir tmp;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = slurp(entry.path().string());
    ASSERT_GT(bytes.size(), 1u);
    std::ofstream(tmp.file("damaged.pt"), std::ios::binary | std::ios::trunc) << bytes.substr(1);
    ImportOptions o;
    o.input = {3, 16, 16};
    o.mean.assign(3, 0.0);
    o.std.assign(3, 1.0);
    const std::string e = error_of([&] { flipguard::import_torchscript(tmp.file("damaged.pt"), o); });
    EXPECT_TRUE(contains(e, "cannot read TorchScript file '" + tmp.file("damaged.pt") + "'"))
        << entry.path() << ": " << e;
    ++files;
  }
  EXPECT_GE(files, 3);
}

// The import and its check load the file twice; the child reads it once while its bytes stay the
// same. A file replaced under the same name is read in a child again: this damaged record makes
// LibTorch allocate 3 GB when the importing process reads it, and only the child refuses it as
// a file it cannot read.
TEST_F(TorchScript, AFileChangedUnderTheSameNameIsCheckedAgain) {
  const std::string path = file("replaced.pt");
  std::filesystem::copy_file(file("every_op_traced.pt"), path);
  const Model m = flipguard::import_torchscript(path, options({3, 20, 20}));
  EXPECT_LT(flipguard::compare_with_torchscript(m, path, 2, 1).max_abs_diff, 1e-4);
  const std::string damaged = slurp(std::string(FLIPGUARD_SOURCE_DIR) +
                                    "/fuzz/regressions/torchscript/debug-record-makes-the-unpickler-allocate-3-GB");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << damaged.substr(1);
  const std::string e = error_of([&] { flipguard::import_torchscript(path, options({3, 20, 20})); });
  EXPECT_TRUE(contains(e, "cannot read TorchScript file '" + path + "'")) << e;
}

TEST_F(TorchScript, ExportedStateDictLoadsInPythonAndGivesTheChangedModelsScores) {
  Model m = flipguard::import_torchscript(file("every_op_traced.pt"), options({3, 20, 20}));
  // Stand-in for hardening: change every weight and bias, so that the export must carry them,
  // and the folded batch normalization of `down` (whose conv has a bias) and of `stem.0` (whose
  // conv has none: its bias goes into the running mean).
  for (Block& b : m.net.blocks) {
    if (!b.weighted()) continue;
    b.weight = b.weight * 1.5;
    b.bias = b.bias + 0.25;
  }
  flipguard::export_state_dict(m, file("changed.pt"));
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({6, 3, 20, 20});
  {
    const std::vector<char> bytes = torch::jit::pickle_save(x);
    std::ofstream(file("inputs.pt"), std::ios::binary).write(bytes.data(), bytes.size());
  }
  const Result r = run_shell("/usr/bin/python3 " + kScripts + "/check_state_dict.py EveryOp " +
                             file("changed.pt") + " " + file("inputs.pt") + " " +
                             file("outputs.pt"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(file("outputs.pt"), std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  const torch::Tensor python = torch::jit::pickle_load(bytes).toTensor();
  torch::NoGradGuard no_grad;
  const torch::Tensor ours = m.net.forward(x);
  ASSERT_EQ(python.sizes(), ours.sizes());
  EXPECT_LT((python - ours).abs().max().item<double>(), 1e-4);
  // ... and they are not the original module's scores.
  torch::jit::Module original = torch::jit::load(file("every_op_traced.pt"));
  original.eval();
  EXPECT_GT((original.forward({x}).toTensor() - ours).abs().max().item<double>(), 0.01);

  // Keys in the module's order, with the module's dtypes.
  const auto dict = flipguard::state_dict(m);
  ASSERT_EQ(dict.size(), 21u);
  EXPECT_EQ(dict.front().first, "stem.0.weight");
  EXPECT_EQ(dict[5].first, "stem.1.num_batches_tracked");
  EXPECT_EQ(dict[5].second.scalar_type(), torch::kInt64);
  EXPECT_EQ(dict[5].second.item<int64_t>(), 7);
}

TEST_F(TorchScript, ExportRefusesAModelThatWasNotImported) {
  Model m = flipguard::import_torchscript(file("every_op_traced.pt"), options({3, 20, 20}));
  m.meta.erase("torchscript");
  EXPECT_TRUE(contains(error_of([&] { flipguard::state_dict(m); }), "not imported from TorchScript"));
}

TEST_F(TorchScript, CliImportChecksTheScoresAndExportWritesTheStateDict) {
  const std::string bin = FLIPGUARD_BINARY;
  Result r = run_shell(bin + " import --torchscript " + file("every_op_scripted.pt") +
                       " --input 3x20x20 --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25 --out " +
                       file("cli.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "checked on 8 random inputs")) << r.output;
  EXPECT_TRUE(contains(r.output, "(batch norm folded)")) << r.output;
  const Model m = flipguard::load_model(file("cli.fgm"));
  EXPECT_EQ(m.net.input_mean, (std::vector<double>{0.5, 0.5, 0.5}));
  EXPECT_EQ(m.net.input_std, (std::vector<double>{0.25, 0.25, 0.25}));
  EXPECT_EQ(m.net.arch, "every_op_scripted");

  r = run_shell(bin + " export --model " + file("cli.fgm") + " --state-dict " + file("cli.pt"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "21 tensors")) << r.output;
  EXPECT_TRUE(fs::exists(file("cli.pt")));

  r = run_shell(bin + " import --torchscript " + file("sigmoid_traced.pt") +
                " --input 3x20x20 --out " + file("no.fgm"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "aten::sigmoid")) << r.output;
  EXPECT_FALSE(fs::exists(file("no.fgm")));
  r = run_shell(bin + " import --torchscript " + file("every_op_traced.pt") +
                " --input 3x20 --out " + file("no.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "expected CxHxW")) << r.output;
  r = run_shell(bin + " import --torchscript " + file("every_op_traced.pt") +
                " --input 3x20x20 --mean 0.5 --out " + file("no.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--mean has 1 values; the input has 3 channels")) << r.output;
  EXPECT_FALSE(fs::exists(file("no.fgm")));
}

}  // namespace
