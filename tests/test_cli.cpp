// The flipguard program: bad input gives a clear one-line error and a non-zero exit, and never
// leaves a half-written output file.
#include <flipguard/data.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace flipguard;

namespace {

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr
};

/// Runs a shell command line, stderr with stdout.
Result run_shell(const std::string& line) {
  const std::string cmd = line + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

/// Runs flipguard with `args`.
Result run(const std::string& args) { return run_shell(std::string(FLIPGUARD_BINARY) + " " + args); }

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/flipguard-cli-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
  size_t count() const {
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(path)) n += e.is_regular_file();
    return n;
  }
};

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST(Cli, ZooListsEveryArchitectureWithItsSites) {
  const Result r = run("zoo");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const auto& n : zoo_names()) EXPECT_TRUE(contains(r.output, n + ":")) << r.output;
  EXPECT_TRUE(contains(r.output, "site 3  gap      64x1x1")) << r.output;
}

TEST(Cli, ThreadsGoBeforeOrAfterTheSubcommand) {
  for (const char* args : {"--threads 1 zoo", "zoo --threads 1"}) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 0) << args << ": " << r.output;
    EXPECT_TRUE(contains(r.output, "mnist-cnn:")) << r.output;
  }
  const Result bad = run("zoo --threads 0");
  EXPECT_NE(bad.status, 0);
  EXPECT_TRUE(contains(bad.output, "--threads")) << bad.output;
}

TEST(Cli, UnknownArchitectureListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch lenet --data mnist --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "lenet")) << r.output;
  for (const auto& n : zoo_names()) EXPECT_TRUE(contains(r.output, n)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownDataSetListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data svhn --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "svhn")) << r.output;
  for (const char* n : {"mnist", "fashion-mnist", "cifar10"}) EXPECT_TRUE(contains(r.output, n)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownAugmentationListsTheValidOnes) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data mnist --augment elastic --out " + d.file("m.fgm"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "elastic")) << r.output;
  for (const auto& m : {"auto", "on", "shift", "affine", "off"})
    EXPECT_TRUE(contains(r.output, m)) << r.output;
  EXPECT_EQ(d.count(), 0u);
}

TEST(Cli, UnknownOptionListsTheValidOnes) {
  const Result r = run("eval --model x.fgm --data mnist --frobnicate 3");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--frobnicate")) << r.output;
  EXPECT_TRUE(contains(r.output, "--model")) << r.output;
  EXPECT_TRUE(contains(r.output, "--json")) << r.output;
}

TEST(Cli, UnknownSubcommandIsRejected) {
  const Result r = run("frobnicate");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "frobnicate")) << r.output;
}

TEST(Cli, MissingAndCorruptModelFilesGiveOneLineErrors) {
  TempDir d;
  Result r = run("eval --model " + d.file("missing.fgm") + " --data mnist");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "missing.fgm")) << r.output;

  std::ofstream(d.file("junk.fgm")) << "this is not a model";
  r = run("quantize --model " + d.file("junk.fgm") + " --data mnist --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "not a flipguard model")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
}

TEST(Cli, DataSetOfTheWrongShapeIsRejectedWithoutOutput) {
  TempDir d;
  save_model({build_zoo("cifar-cnn"), std::nullopt, {}}, d.file("c.fgm"));
  const Result r = run("quantize --model " + d.file("c.fgm") + " --data mnist --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "1x28x28")) << r.output;
  EXPECT_TRUE(contains(r.output, "3x32x32")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
}

TEST(Cli, MissingDataFolderIsNamed) {
  TempDir d;
  const Result r = run("train --arch mnist-cnn --data mnist:" + d.file("nowhere") + " --out " +
                       d.file("m.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "nowhere")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("m.fgm")));
}

TEST(Cli, TrainQuantizeEvalEndToEndOnASmallSubset) {
  TempDir d;
  Result r = run("--threads 2 train --arch mnist-cnn-opt --data mnist --epochs 1 --limit 1024 --out " +
                 d.file("m.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("quantize --model " + d.file("m.fgm") + " --data mnist --calibration-images 200 --out " +
          d.file("q.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "block 0 conv0    act s8.")) << r.output;
  r = run("eval --model " + d.file("q.fgm") + " --data mnist --images 500 --json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "\"quantized\": true")) << r.output;
  EXPECT_TRUE(contains(r.output, "\"images\": 500")) << r.output;
  const Model q = load_model(d.file("q.fgm"));
  ASSERT_TRUE(q.quant.has_value());
  EXPECT_EQ(q.quant->act.size(), q.net.blocks.size());
}

// train --teacher: distillation from a model file; its temperature only with a teacher, and a
// teacher for other images is refused, all before anything is written.
TEST(Cli, TrainDistilsFromATeacherModel) {
  TempDir d;
  Result r = run("--threads 2 train --arch mnist-teacher --data mnist --epochs 1 --limit 512 --out " +
                 d.file("t.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("--threads 2 train --arch mnist-cnn --data mnist --epochs 1 --limit 512 --teacher " +
          d.file("t.fgm") + " --temperature 3 --out " + d.file("s.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const Model s = load_model(d.file("s.fgm"));
  EXPECT_EQ(s.net.arch, "mnist-cnn");
  EXPECT_EQ(s.meta.at("teacher"), d.file("t.fgm"));

  r = run("train --arch mnist-cnn --data mnist --temperature 3 --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--teacher")) << r.output;
  r = run("train --arch mnist-cnn --data mnist --teacher " + d.file("nowhere.fgm") + " --out " +
          d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "nowhere.fgm")) << r.output;
  r = run("train --arch mnist-cnn --data mnist --limit 64 --teacher " +
          std::string(FLIPGUARD_SOURCE_DIR) + "/models/cifar-cnn-cifar10.fgm --out " +
          d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "3x32x32")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("x.fgm")));
}

namespace {

const std::string kModel = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist-q8.fgm";

}  // namespace

TEST(Cli, QuantizeNoRefineKeepsEachTensorsOwnFormat) {
  TempDir d;
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  const Result r = run("quantize --model " + float_model +
                       " --data mnist --calibration-images 100 --no-refine --out " + d.file("q.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const Model m = load_model(float_model);
  const Dataset calib = load_dataset(parse_data_spec("mnist"), Split::Train).head(100);
  QuantOptions o;
  o.refine = false;
  EXPECT_TRUE(load_model(d.file("q.fgm")).quant.value() == calibrate(m.net, calib.images, o));
  o.refine = true;
  const QuantFormats refined = calibrate(m.net, calib.images, o);
  EXPECT_FALSE(refined == calibrate(m.net, calib.images, QuantOptions{8, true, 100, -16, 30, false}))
      << "on this model the refinement moves a format, so the comparison above can fail";
}

TEST(Cli, EvalWritesThePredictionsOfTheFixedPointPass) {
  TempDir d;
  const Result r = run("eval --model " + kModel + " --data mnist --images 300 --json --predictions " +
                       d.file("top.npy"));
  ASSERT_EQ(r.status, 0) << r.output;
  const NpyArray top = read_npy(d.file("top.npy"));
  ASSERT_EQ(top.shape, (std::vector<int64_t>{300}));
  // The same classes as the library's fixed-point pass, image by image, and the reported
  // accuracy is theirs.
  const Model m = load_model(kModel);
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(300);
  const torch::Tensor expected = QuantizedNetwork(m.net, *m.quant).scores(test.images).argmax(1);
  int64_t correct = 0;
  for (int64_t i = 0; i < 300; ++i) {
    ASSERT_EQ(static_cast<int64_t>(top.data[i]), expected[i].item<int64_t>()) << "image " << i;
    correct += static_cast<int64_t>(top.data[i]) == test.labels[i].item<int64_t>();
  }
  const double accuracy = nlohmann::json::parse(r.output)["accuracy"];
  EXPECT_DOUBLE_EQ(accuracy, correct / 300.0);
}

TEST(Cli, EvalWritesTheClassScoresOfTheFixedPointAndTheFloatPass) {
  TempDir d;
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(200);
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  for (const std::string& model : {kModel, float_model}) {
    SCOPED_TRACE(model);
    const Result r = run("eval --model " + model + " --data mnist --images 200 --json --scores " +
                         d.file("scores.npy") + " --predictions " + d.file("top.npy"));
    ASSERT_EQ(r.status, 0) << r.output;
    const NpyArray scores = read_npy(d.file("scores.npy"));
    const NpyArray top = read_npy(d.file("top.npy"));
    ASSERT_EQ(scores.shape, (std::vector<int64_t>{200, 10}));
    // The fixed-point pass: its exact integer scores times their unit; the float pass: forward.
    const Model m = load_model(model);
    torch::Tensor expected;
    if (m.quant) {
      const QuantizedNetwork q(m.net, *m.quant);
      expected = q.scores(test.images) * q.score_scale();
    } else {
      torch::NoGradGuard no_grad;
      expected = m.net.forward(m.net.preprocess(test.images)).flatten(1).to(torch::kFloat64);
    }
    int64_t correct = 0;
    for (int64_t i = 0; i < 200; ++i) {
      int64_t best = 0;
      for (int64_t k = 0; k < 10; ++k) {
        // Exact for the integer pass; the float pass may round differently in other batches.
        if (m.quant)
          ASSERT_EQ(scores.data[i * 10 + k], expected[i][k].item<double>()) << "image " << i;
        else
          ASSERT_NEAR(scores.data[i * 10 + k], expected[i][k].item<double>(), 1e-4) << "image " << i;
        if (scores.data[i * 10 + k] > scores.data[i * 10 + best]) best = k;
      }
      ASSERT_EQ(static_cast<int64_t>(top.data[i]), best) << "image " << i;
      correct += best == test.labels[i].item<int64_t>();
    }
    const nlohmann::json j = nlohmann::json::parse(r.output);
    EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), correct / 200.0);
    EXPECT_EQ(j["scores"], d.file("scores.npy"));
  }
}

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST(Inject, ExhaustiveCampaignWritesItsResults) {
  TempDir d;
  const std::string out = d.file("run");
  const Result r = run("inject --model " + kModel + " --data mnist --sites 3 --images 40 --out " + out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "site3")) << r.output;
  const auto s = nlohmann::json::parse(slurp(out + "/summary.json"));
  EXPECT_EQ(s["campaign"], "exhaustive");
  EXPECT_EQ(s["golden"]["images"], 40);
  EXPECT_EQ(s["fault_sets"], 64);
  EXPECT_EQ(s["sites"].size(), 1u);
  EXPECT_EQ(s["sites"][0]["shape"], nlohmann::json({64, 1, 1}));
  EXPECT_GT(s["overall"]["worst_case"].get<double>(), 0.0);
  EXPECT_GT(s["evaluations_per_second"].get<double>(), 0.0);
  for (const char* f : {"rates_site3.npy", "rates_site3.csv", "histogram.csv", "histogram.svg",
                        "histogram.gp"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(out)) files += e.is_regular_file();
  EXPECT_EQ(files, 6u) << "no checkpoint or temporary file is left";
}

TEST(Inject, BadRequestsAreRejectedWithTheValidChoices) {
  TempDir d;
  const std::string base = "inject --model " + kModel + " --data mnist --images 10 --out " + d.file("x");
  Result r = run(base + " --campaign random");
  EXPECT_NE(r.status, 0);
  for (const char* n : {"exhaustive", "sampled", "ber"}) EXPECT_TRUE(contains(r.output, n)) << r.output;
  r = run(base + " --sites 7");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "site 7 does not exist: mnist-cnn has sites 0,1,2,3")) << r.output;
  r = run(base + " --target weights --sites 3");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "0,1,2,4")) << r.output;
  r = run(base + " --bit 8");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--bit 8")) << r.output;
  r = run(base + " --bit top");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "msb, all or a bit position")) << r.output;
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, d.file("f.fgm"));
  r = run("inject --model " + d.file("f.fgm") + " --data mnist --out " + d.file("y"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "not quantized")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("y") + "/summary.json"));
}

namespace {
/// Starts `flipguard ARGS` and kills it (SIGKILL, no chance to clean up) as soon as `file`
/// exists. True when it was killed after the file appeared (not ended before).
bool kill_once_written(const std::string& args, const std::string& file) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    std::freopen("/dev/null", "w", stderr);
    std::freopen("/dev/null", "w", stdout);
    const std::string cmd = std::string(FLIPGUARD_BINARY) + " " + args;
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), (char*)nullptr);
    _exit(127);
  }
  bool written = false;
  for (int i = 0; i < 30000 && !written; ++i) {
    written = fs::exists(file);
    if (!written) usleep(10000);
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return written && WIFSIGNALED(status);
}
}  // namespace

// A campaign killed (SIGKILL, no chance to clean up) and resumed gives the same result as one
// that ran through; a resume with other options is refused.
TEST(Inject, ResumeAfterAKillGivesTheIdenticalResult) {
  TempDir d;
  const std::string args = " --model " + kModel +
                           " --data mnist --sites 3 --bit all --images 4000 --engine reference --workers 1"
                           " --checkpoint-every 0 --out ";
  const std::string killed = d.file("killed"), whole = d.file("whole");
  ASSERT_TRUE(kill_once_written("inject" + args + killed, killed + "/checkpoint.json"));
  ASSERT_FALSE(fs::exists(killed + "/summary.json"));
  // Without --resume, the unfinished campaign is not overwritten.
  Result r = run("inject" + args + killed);
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--resume")) << r.output;
  // Other options do not match the checkpoint.
  r = run("inject" + args + killed + " --resume --seed 2");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "another campaign")) << r.output;
  r = run("inject" + args + killed + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("inject" + args + whole);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(slurp(killed + "/rates_site3.npy"), slurp(whole + "/rates_site3.npy"));
  EXPECT_EQ(slurp(killed + "/histogram.csv"), slurp(whole + "/histogram.csv"));
  EXPECT_FALSE(fs::exists(killed + "/checkpoint.json"));
}

// mpirun -n 2: the ranks split the fault sets and the first writes one result, identical to the
// single process's, for an image-major (cone) and a fault-major (BER, incremental) campaign.
TEST(Inject, TwoMpiRanksGiveTheSingleProcessResult) {
  const std::string mpiexec = FLIPGUARD_MPIEXEC;
  ASSERT_FALSE(mpiexec.empty()) << "built without MPI (FLIPGUARD_MPI=OFF)";
  TempDir d;
  // Root may start MPI jobs only when it says so; shared memory only, without the cross-memory
  // attach that containers often forbid; and a time limit, so that a machine whose network
  // Open MPI cannot sort out fails the test instead of hanging it.
  const std::string mpirun = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                             "OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none "
                             "OMPI_MCA_rmaps_base_oversubscribe=1 timeout 600 " +
                             mpiexec + " -n 2 " + std::string(FLIPGUARD_BINARY) + " ";
  auto mpi = [&](const std::string& args) { return run_shell(mpirun + args); };
  const std::string exhaustive = "inject --model " + kModel + " --data mnist --sites 1,2 --images 300 --out ";
  Result r = mpi(exhaustive + d.file("mpi"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("results in"), r.output.rfind("results in")) << "one process writes";
  r = run(exhaustive + d.file("one"));
  ASSERT_EQ(r.status, 0) << r.output;
  for (const std::string f : {"rates_site1.npy", "rates_site2.npy", "histogram.csv"})
    EXPECT_EQ(slurp(d.file("mpi") + "/" + f), slurp(d.file("one") + "/" + f)) << f;
  const auto summary = nlohmann::json::parse(slurp(d.file("mpi") + "/summary.json"));
  EXPECT_EQ(summary["processes"], 2);
  EXPECT_FALSE(fs::exists(d.file("mpi") + "/checkpoint.rank0of2.json"));
  EXPECT_FALSE(fs::exists(d.file("mpi") + "/checkpoint.rank1of2.json"));
  const std::string ber = "inject --model " + kModel +
                          " --data mnist --campaign ber --ber 1e-4,1e-3 --runs 6 --images 200 --out ";
  r = mpi(ber + d.file("mpi-ber"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run(ber + d.file("one-ber"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(slurp(d.file("mpi-ber") + "/ber_rates.npy"), slurp(d.file("one-ber") + "/ber_rates.npy"));
  // An error in the ranks ends the job with a non-zero exit and leaves no result.
  r = mpi("inject --model " + d.file("missing.fgm") + " --data mnist --out " + d.file("bad"));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "missing.fgm")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("bad") + "/summary.json"));
}

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
  EXPECT_TRUE(contains(r.output, "--images 0: expected a positive number")) << r.output;
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

// harden --method architecture on the trained mnist-cnn: the bottleneck is reported and moved,
// the float scores agree; bad requests give a clear error and no output file.
TEST(Harden, ArchitectureMovesTheBottleneckAndRejectsBadRequests) {
  TempDir d;
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  Result r = run("harden --method architecture --model " + float_model +
                 " --data mnist --check-images 200 --out " + d.file("opt.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "bottleneck: block 3 'gap' 64x1x1 (64 neurons, median site 12544): moved"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "float test accuracy 98.25%")) << r.output;
  const Model m = load_model(d.file("opt.fgm"));
  EXPECT_EQ(m.net.arch, "mnist-cnn-opt");
  EXPECT_FALSE(m.quant.has_value());
  EXPECT_EQ(m.meta["harden"]["moved"], 1);
  EXPECT_LT(m.meta["harden"]["max_float_score_difference"].get<double>(), 1e-4);
  // Nothing to do on the optimized model: written unchanged, and it says so.
  r = run("harden --model " + d.file("opt.fgm") + " --out " + d.file("again.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "no bottleneck site")) << r.output;
  EXPECT_TRUE(contains(r.output, "0 poolings moved")) << r.output;
  // A quantized model needs data to choose its new formats.
  r = run("harden --model " + kModel + " --out " + d.file("q.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--data is needed")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("q.fgm")));
  r = run("harden --method magic --model " + float_model + " --out " + d.file("m.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "architecture")) << r.output;
  r = run("harden --bottleneck-ratio 2 --model " + float_model + " --out " + d.file("m.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_FALSE(fs::exists(d.file("m.fgm")));
}

// harden --method features on the trained mnist-cnn-opt, shortened (500 training images,
// 100 of them for the calibration, 2 iterations, accuracies on 2,000 test images): the model, features.json and the Fig. 5 figures; an interrupted run resumes
// from its checkpoint; bad requests give a clear error and no output file.
TEST(Harden, FeaturesWritesTheModelTheHistoryAndTheFigures) {
  TempDir d;
  const std::string model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-opt-mnist-q8.fgm";
  const std::string common = "harden --method features --model " + model +
                             " --data mnist --limit 500 --relevance-images 50 --calibration-images 100 "
                             "--test-images 2000 --threads 2 ";
  Result r = run(common + "--iterations 2 --out " + d.file("f.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "float baseline 97.65% on 2000 test images")) << r.output;
  const Model m = load_model(d.file("f.fgm"));
  ASSERT_TRUE(m.quant.has_value());
  EXPECT_EQ(m.net.arch, "mnist-cnn-opt");
  const auto j = nlohmann::json::parse(slurp(d.file("f.features/features.json")));
  EXPECT_EQ(j["method"], "features");
  EXPECT_EQ(j["iterations"], 2);
  EXPECT_EQ(j["train_images"], 500);
  ASSERT_EQ(j["history"].size(), 3u);
  EXPECT_TRUE(j["history"][2]["finetune_train_accuracy"].is_null());
  EXPECT_FALSE(j["history"][1]["finetune_train_accuracy"].is_null());
  EXPECT_EQ(j["finetune"]["target"], "labels");  // the paper's fine-tuning by default
  EXPECT_TRUE(j["finetune"]["temperature"].is_null());
  EXPECT_EQ(j["test_images"], 2000);
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(2000);
  EXPECT_DOUBLE_EQ(j["float_baseline"].get<double>(),
                   float_accuracy(load_model(model).net, test.images, test.labels));
  EXPECT_EQ(j["quantized_accuracy_after"], m.meta["quantized_test_accuracy"]);
  EXPECT_LT(j["mean_sd_after"].get<double>(), j["mean_sd_before"].get<double>());
  for (const char* f : {"fig5a_accuracy.svg", "fig5a_accuracy.gp", "fig5b_criticality_sd.svg",
                        "fig5b_criticality_sd.gp"})
    EXPECT_TRUE(fs::exists(d.file(std::string("f.features/") + f))) << f;
  EXPECT_FALSE(fs::exists(d.file("f.fgm.ckpt"))) << "the checkpoint is removed when done";

  // Killed after its first fine-tuning and resumed, the same run makes the same model.
  const std::string ckpt = d.file("c.ckpt");
  ASSERT_TRUE(kill_once_written(common + "--iterations 2 --checkpoint " + ckpt + " --out " +
                                    d.file("g.fgm"), ckpt));
  ASSERT_FALSE(fs::exists(d.file("g.fgm")));
  r = run(common + "--iterations 2 --resume --checkpoint " + ckpt + " --lr 0.5 --out " + d.file("g.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "other options")) << r.output;
  r = run(common + "--iterations 2 --resume --checkpoint " + ckpt + " --out " + d.file("g.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "resumed from")) << r.output;
  const Model g = load_model(d.file("g.fgm"));
  ASSERT_TRUE(g.quant.has_value());
  EXPECT_TRUE(*g.quant == *m.quant);
  for (size_t b = 0; b < m.net.blocks.size(); ++b)
    if (m.net.blocks[b].weighted())
      EXPECT_TRUE(torch::equal(g.net.blocks[b].weight, m.net.blocks[b].weight)) << b;
  EXPECT_FALSE(fs::exists(ckpt)) << "the checkpoint is removed when done";

  // Short of --until-accuracy after 2 iterations (2 fine-tunings on 500 images do not reach the
  // float baseline), the checkpoint stays, and a run with more iterations continues from it: the
  // same model as a run of 3 iterations from the start.
  ASSERT_LT(j["quantized_accuracy_after"].get<double>(), j["float_baseline"].get<double>());
  const std::string until = common + "--until-accuracy float-baseline ";
  r = run(until + "--iterations 2 --out " + d.file("h.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "not reached in 2 iterations; raise --iterations (with --resume"))
      << r.output;
  ASSERT_TRUE(fs::exists(d.file("h.fgm.ckpt"))) << "kept for a longer run";
  r = run(until + "--iterations 3 --resume --out " + d.file("h.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "resumed from " + d.file("h.fgm.ckpt") + " after iteration 1"))
      << r.output;
  r = run(until + "--iterations 3 --out " + d.file("k.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto hj = nlohmann::json::parse(slurp(d.file("h.features/features.json")));
  const auto kj = nlohmann::json::parse(slurp(d.file("k.features/features.json")));
  ASSERT_EQ(hj["history"].size(), kj["history"].size());
  for (size_t t = 0; t < kj["history"].size(); ++t)
    EXPECT_EQ(hj["history"][t]["quantized_accuracy"], kj["history"][t]["quantized_accuracy"]) << t;
  const Model h = load_model(d.file("h.fgm")), k = load_model(d.file("k.fgm"));
  EXPECT_TRUE(*h.quant == *k.quant);
  for (size_t b = 0; b < k.net.blocks.size(); ++b)
    if (k.net.blocks[b].weighted())
      EXPECT_TRUE(torch::equal(h.net.blocks[b].weight, k.net.blocks[b].weight)) << b;
  EXPECT_EQ(fs::exists(d.file("h.fgm.ckpt")), !kj["reached_baseline"].get<bool>())
      << "removed once the baseline is reached";

  r = run("harden --method features --model " + model + " --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--method features needs --data")) << r.output;
  r = run(common + "--iterations 0 --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 2);
  r = run(common + "--until-accuracy sometime --out " + d.file("x.fgm"));
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.output, "float-baseline")) << r.output;
  r = run(common + "--temperature 4 --out " + d.file("x.fgm"));  // labels: no temperature
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--temperature 4 is the distillation temperature")) << r.output;
  EXPECT_TRUE(contains(r.output, "--finetune-target labels")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("x.fgm")));
}

// reproduce, shortened: every stage runs, results.json agrees with the campaigns it ran, the
// report inlines its figures; a second run keeps every stage; other options are refused.
TEST(Inject, TopFeaturesEvaluatesTheMostCriticalMapsAsTheFullCampaignDoes) {
  TempDir d;
  Result r = run("inject --model " + kModel + " --data mnist --images 120 --top-features 3"
                 " --positions 5 --relevance-images 100 --out " + d.file("top"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "feature map 3: site")) << r.output;
  const auto summary = nlohmann::json::parse(slurp(d.file("top") + "/summary.json"));
  const auto& chosen = summary["selection"]["features"];
  ASSERT_EQ(chosen.size(), 3u);
  // The choice is eq. 5's ranking, computed here by the library on the same images.
  const Model m = load_model(kModel);
  const QuantizedNetwork q(m.net, *m.quant);
  const Dataset train = load_dataset(parse_data_spec("mnist"), Split::Train).head(100);
  const auto want = most_critical_features(
      site_criticality(q, mean_relevance(q, train.images, train.labels)), 3);
  std::set<int> sites;
  int64_t positions = 0;
  for (size_t i = 0; i < 3; ++i) {
    const Shape s = m.net.shapes()[want[i].site];
    EXPECT_EQ(chosen[i]["positions"], std::min<int64_t>(5, s.h * s.w));  // a 1x1 map has one
    positions += chosen[i]["positions"].get<int64_t>();
    EXPECT_EQ(chosen[i]["site"], want[i].site);
    EXPECT_EQ(chosen[i]["channel"], want[i].channel);
    if (i > 0) EXPECT_GE(chosen[i - 1]["eta"].get<double>(), chosen[i]["eta"].get<double>());
    sites.insert(want[i].site);
  }
  EXPECT_EQ(summary["fault_sets"], positions);
  // Each evaluated neuron has the rate that the full campaign of its site gives it; the others
  // are NaN.
  std::string list;
  for (int s : sites) list += (list.empty() ? "" : ",") + std::to_string(s);
  r = run("inject --model " + kModel + " --data mnist --images 120 --sites " + list + " --out " +
          d.file("full"));
  ASSERT_EQ(r.status, 0) << r.output;
  int64_t evaluated = 0;
  for (int s : sites) {
    const NpyArray top = read_npy(d.file("top") + "/rates_site" + std::to_string(s) + ".npy");
    const NpyArray full = read_npy(d.file("full") + "/rates_site" + std::to_string(s) + ".npy");
    ASSERT_EQ(top.shape, full.shape);
    for (size_t i = 0; i < top.data.size(); ++i) {
      if (std::isnan(top.data[i])) continue;
      EXPECT_EQ(top.data[i], full.data[i]) << "site " << s << " neuron " << i;
      ++evaluated;
    }
  }
  EXPECT_EQ(evaluated, positions);
  r = run("inject --model " + kModel + " --data mnist --top-features 3 --out " + d.file("x"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "go together")) << r.output;
}

TEST(Harden, RangesRestrictEverySiteAndRefuseAFloatModel) {
  TempDir d;
  Result r = run("harden --method ranges --model " + kModel + " --data mnist --range-images 300"
                 " --test-images 500 --out " + d.file("r.fgm"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "site 0 ")) << r.output;
  EXPECT_TRUE(contains(r.output, "with the ranges (500 test images; ranges from 300 training")) << r.output;
  const Model m = load_model(d.file("r.fgm"));
  for (int s : m.net.sites()) EXPECT_TRUE(m.quant->act[s].restricted) << s;
  EXPECT_EQ(m.quant->act[0].range_lo, 0);  // after a ReLU
  const std::string float_model = std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist.fgm";
  r = run("harden --method ranges --model " + float_model + " --data mnist --out " + d.file("f.fgm"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "quantize it first")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("f.fgm")));
}

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
