// The flipguard program: bad input gives a clear one-line error and a non-zero exit, and never
// leaves a half-written output file.
#include <flipguard/model_file.hpp>
#include <flipguard/zoo.hpp>

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>

namespace fs = std::filesystem;
using namespace flipguard;

namespace {

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr
};

Result run(const std::string& args) {
  const std::string cmd = std::string(FLIPGUARD_BINARY) + " " + args + " 2>&1";
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
