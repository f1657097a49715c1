// The program's own options as users meet them: --version, recipe files (--config,
// --write-config) and option errors in words.
#include <flipguard/model_file.hpp>
#include <flipguard/version.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

/// Every regular file of `dir` but summary.json (which records times), by name, with its bytes.
std::map<std::string, std::string> result_files(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "summary.json")
      files[e.path().filename().string()] = slurp(e.path().string());
  return files;
}

}  // namespace

// --version before or after any subcommand, without the subcommand's required options.
TEST(Options, VersionNamesTheBuildLibTorchVectorUnitsAndCommit) {
  for (const char* args : {"--version", "inject --version", "train --version"}) {
    const Result r = run(args);
    ASSERT_EQ(r.status, 0) << args << ": " << r.output;
    const nlohmann::json b = build_info();
    EXPECT_TRUE(contains(r.output, "flipguard " + b["version"].get<std::string>() + "\n")) << r.output;
    EXPECT_TRUE(contains(r.output, "libtorch 1.13")) << r.output;
    EXPECT_TRUE(contains(r.output, "vector instructions " + b["vector_instructions"].get<std::string>()))
        << r.output;
    EXPECT_TRUE(contains(r.output, "git commit " + b["git_commit"].get<std::string>())) << r.output;
  }
  EXPECT_NE(build_info()["git_commit"].get<std::string>(), "");
}

// The rule in words, never CLI11's "Value 0 not in range 0.000000 to 1797693...".
TEST(Options, OptionErrorsSayTheRuleInWords) {
  TempDir d;
  const std::string inject = "inject --model " + kModel + " --data mnist --out " + d.file("o");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {inject + " --runs 0 --campaign ber", "--runs must be at least 1, got 0"},
      {inject + " --chunk 0", "--chunk must be at least 1, got 0"},
      {inject + " --top-features 0", "--top-features must be at least 1, got 0"},
      {inject + " --images -3", "--images must be at least 0, got -3"},
      {inject + " --chunk many", "--chunk must be a number, got 'many'"},
      // An empty site list would run site 0; a negative seed would wrap to 2^64 - 1.
      {inject + " --sites ''", "--sites must be a number, got ''"},
      {inject + " --seed -1", "--seed must be at least 0, got -1"},
      {"train --arch mnist-cnn --data mnist --out " + d.file("t.fgm") + " --seed -5",
       "--seed must be at least 0, got -5"},
      {"zoo --threads 0", "--threads must be between 1 and 1024, got 0"},
      {"quantize --model " + kModel + " --data mnist --out " + d.file("q.fgm") + " --bits 40",
       "--bits must be between 2 and 16, got 40"},
      {"harden --method features --model " + kModel + " --data mnist --out " + d.file("h.fgm") +
           " --lr 0",
       "--lr must be greater than 0, got 0"},
  };
  for (const auto& [args, said] : cases) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 2) << args << ": " << r.output;
    EXPECT_TRUE(contains(r.output, said)) << args << ": " << r.output;
    EXPECT_FALSE(contains(r.output, "not in range")) << r.output;
    EXPECT_FALSE(contains(r.output, "17976931348623157")) << r.output;
  }
  EXPECT_EQ(d.count(), 0u);
}

// Sizes that would exhaust memory are refused, with the value and the limit, before anything is
// allocated: a BER campaign of 2^31 runs a rate (it once grew past 7 GB and died of bad_alloc),
// an import input of 3x100000x100000 (LibTorch's own "can't allocate 960000000000 bytes").
TEST(Options, AbsurdSizesAreRefusedBeforeAllocation) {
  TempDir d;
  Result r = run("inject --model " + kModel + " --data mnist --images 10 --campaign ber --runs 2147483648 --out " +
                 d.file("ber"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "runs 2147483648: expected at most 13421772 for 5 bit error rates"))
      << r.output;
  r = run("import --torchscript " + d.file("m.pt") + " --input 3x100000x100000 --out " + d.file("m.fgm"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "input shape 3x100000x100000: expected sides of 1 to 65536")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("m.fgm")));
}

// A campaign run again from the recipe it wrote gives the identical result files; summary.json
// holds the recipe and the build; command-line options override the recipe's.
TEST(Options, ACampaignRepeatedFromItsRecipeGivesTheSameFiles) {
  TempDir d;
  const std::string recipe = d.file("campaign.toml");
  const Result first = run("--threads 1 inject --model " + kModel +
                           " --data mnist --campaign sampled --error 0.05 --seed 7 --images 60 "
                           "--sites 1,2 --out " + d.file("a") + " --write-config " + recipe);
  ASSERT_EQ(first.status, 0) << first.output;
  const std::string text = slurp(recipe);
  EXPECT_TRUE(contains(text, "threads=1\n")) << text;
  EXPECT_TRUE(contains(text, "[inject]\n")) << text;
  EXPECT_TRUE(contains(text, "seed=7\n")) << text;
  EXPECT_TRUE(contains(text, "campaign=\"sampled\"\n")) << text;
  EXPECT_TRUE(contains(text, "\n# engine=\"cone\"\n")) << "defaults, as comments: " << text;
  EXPECT_FALSE(contains(text, "write-config")) << text;
  const auto summary = nlohmann::json::parse(slurp(d.file("a") + "/summary.json"));
  EXPECT_EQ(summary["config"], text);
  EXPECT_EQ(summary["flipguard"], build_info());

  const Result again = run("inject --config " + recipe + " --out " + d.file("b"));
  ASSERT_EQ(again.status, 0) << again.output;
  const auto a = result_files(d.file("a")), b = result_files(d.file("b"));
  EXPECT_TRUE(a.count("samples.csv")) << "a sampled campaign's faults, outcome by outcome";
  EXPECT_GE(a.size(), 2u);
  EXPECT_EQ(a, b);

  const Result missing = run("inject --config " + d.file("none.toml"));
  EXPECT_NE(missing.status, 0);
  EXPECT_TRUE(contains(missing.output, "none.toml")) << missing.output;
}

// Every subcommand reads a recipe: its `[subcommand]` table supplies the required options (the
// run then fails on the missing model file the recipe names, which only the recipe could give).
// An evaluation repeated from its recipe writes the same predictions and scores.
TEST(Options, EverySubcommandReadsARecipe) {
  TempDir d;
  const std::string none = d.file("absent.fgm");
  const std::vector<std::pair<std::string, std::string>> recipes = {
      {"train", "arch=\"mnist-cnn\"\ndata=\"mnist\"\nout=\"" + d.file("t.fgm") +
                    "\"\nteacher=\"" + none + "\""},
      {"eval", "model=\"" + none + "\"\ndata=\"mnist\""},
      {"quantize", "model=\"" + none + "\"\ndata=\"mnist\"\nout=\"" + d.file("q.fgm") + "\""},
      {"inject", "model=\"" + none + "\"\ndata=\"mnist\"\nout=\"" + d.file("i") + "\""},
      {"analyze", "model=\"" + none + "\"\ndata=\"mnist\"\nout=\"" + d.file("a") + "\""},
      {"harden", "method=\"ranges\"\nmodel=\"" + none + "\"\ndata=\"mnist\"\nout=\"" +
                     d.file("h.fgm") + "\""},
      {"reproduce", "benchmark=\"mnist\"\nmodels=\"" + none + "\"\nout=\"" + d.file("r") + "\""},
      {"import", "torchscript=\"" + none + "\"\ninput=\"1x28x28\"\nout=\"" + d.file("m.fgm") + "\""},
      {"export", "model=\"" + none + "\"\nstate-dict=\"" + d.file("s.pt") + "\""},
  };
  for (const auto& [sub, body] : recipes) {
    const std::string file = d.file(sub + ".toml");
    std::ofstream(file) << "[" << sub << "]\n" << body << "\n";
    const Result r = run(sub + " --config " + file);
    EXPECT_EQ(r.status, 1) << sub << ": " << r.output;
    EXPECT_TRUE(contains(r.output, "absent.fgm")) << sub << ": " << r.output;
  }

  const std::string recipe = d.file("eval.toml");
  const Result first = run("eval --model " + kModel + " --data mnist --images 300 --predictions " +
                           d.file("p1.npy") + " --scores " + d.file("s1.npy") +
                           " --write-config " + recipe);
  ASSERT_EQ(first.status, 0) << first.output;
  EXPECT_TRUE(contains(slurp(recipe), "[eval]\nmodel=")) << slurp(recipe);
  const Result again = run("eval --config " + recipe + " --predictions " + d.file("p2.npy") +
                           " --scores " + d.file("s2.npy"));
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_EQ(first.output, again.output);
  EXPECT_EQ(slurp(d.file("p1.npy")), slurp(d.file("p2.npy")));
  EXPECT_EQ(slurp(d.file("s1.npy")), slurp(d.file("s2.npy")));
  EXPECT_GT(slurp(d.file("s1.npy")).size(), 300u * 10 * 8);

  const Result top = run("--help");
  EXPECT_TRUE(contains(top.output, "--config")) << top.output;
  EXPECT_TRUE(contains(top.output, "--write-config")) << top.output;
  const Result zoo = run("zoo --write-config " + d.file("zoo.toml"));
  ASSERT_EQ(zoo.status, 0) << zoo.output;
  EXPECT_EQ(run("zoo --config " + d.file("zoo.toml")).output, zoo.output);
}

// On a terminal (a pseudo-terminal from script(1)) a campaign draws one line redrawn in place per
// phase; piped, it prints at most a line every 30 s (a short campaign: just the final one);
// --quiet, none.
TEST(Options, ProgressIsOneLiveLineOnATerminalAndRareLinesInALog) {
  TempDir d;
  const std::string args = "inject --model " + kModel + " --data mnist --images 300 --sites 2 --out ";
  const Result tty = run_shell("script -qefc '" + std::string(FLIPGUARD_BINARY) + " " + args +
                               d.file("a") + "' /dev/null");
  ASSERT_EQ(tty.status, 0) << tty.output;
  // Redrawn: the campaign's line is rewritten with a carriage return and an erase-line, never
  // followed by a new line before its end.
  const std::string redraw = "\r\033[K";
  EXPECT_TRUE(contains(tty.output, redraw + "campaign [")) << tty.output;
  EXPECT_TRUE(contains(tty.output, "campaign [####################] 100.0% 12544/12544 fault sets"))
      << tty.output;
  size_t campaign_lines = 0;
  std::istringstream lines(tty.output);
  for (std::string l; std::getline(lines, l);) campaign_lines += contains(l, "campaign [");
  EXPECT_EQ(campaign_lines, 1u) << tty.output;

  const Result piped = run(args + d.file("b"));
  ASSERT_EQ(piped.status, 0) << piped.output;
  EXPECT_FALSE(contains(piped.output, "\r")) << piped.output;
  EXPECT_FALSE(contains(piped.output, "[#")) << piped.output;
  size_t plain = 0;
  std::istringstream plines(piped.output);
  for (std::string l; std::getline(plines, l);) plain += l.rfind("campaign ", 0) == 0;
  EXPECT_EQ(plain, 1u) << "a campaign shorter than 30 s prints its line once, at the end: "
                       << piped.output;
  EXPECT_TRUE(contains(piped.output, "campaign 100.0% 12544/12544 fault sets")) << piped.output;
  // Every phase has its line: the golden run and the writing of the results too.
  EXPECT_TRUE(contains(tty.output, "golden run [####################] 100.0% 300/300 images"))
      << tty.output;
  EXPECT_TRUE(contains(piped.output, "golden run 100.0% 300/300 images")) << piped.output;
  EXPECT_TRUE(contains(piped.output, "writing results 100.0% 1/1 campaigns")) << piped.output;

  const Result quiet = run("--quiet " + args + d.file("c"));
  ASSERT_EQ(quiet.status, 0) << quiet.output;
  EXPECT_FALSE(contains(quiet.output, "campaign 100.0%")) << quiet.output;
  EXPECT_EQ(slurp(d.file("a") + "/rates_site2.npy"), slurp(d.file("c") + "/rates_site2.npy"));
}

// A golden run split by --golden-memory: a line per chunk, the split recorded, the same files.
TEST(Options, AGoldenRunSplitByMemoryGivesTheSameResults) {
  TempDir d;
  const std::string args = "inject --model " + kModel + " --data mnist --images 300 --sites 2 --out ";
  const Result one = run(args + d.file("one"));
  ASSERT_EQ(one.status, 0) << one.output;
  const Result split = run(args + d.file("split") + " --golden-memory 1");
  ASSERT_EQ(split.status, 0) << split.output;
  const auto summary = nlohmann::json::parse(slurp(d.file("split") + "/summary.json"));
  const int64_t chunks = summary.at("golden_chunks").at("chunks").get<int64_t>();
  EXPECT_GT(chunks, 1) << split.output;
  EXPECT_TRUE(contains(split.output, "golden run " + std::to_string(chunks) + "/" +
                                         std::to_string(chunks) + " 100.0%"))
      << split.output;
  EXPECT_EQ(result_files(d.file("one")), result_files(d.file("split")));
  EXPECT_EQ(nlohmann::json::parse(slurp(d.file("one") + "/summary.json")).at("golden"),
            summary.at("golden"));
  EXPECT_FALSE(fs::exists(d.file("split") + "/checkpoint.chunk0of" + std::to_string(chunks) +
                          ".json"));
}

// quantize, analyze and harden report their phases too.
TEST(Options, CalibrationAndRelevanceShowTheirPhases) {
  TempDir d;
  const Result q = run("quantize --model " + kModel + " --data mnist --calibration-images 200 --out " +
                       d.file("q.fgm"));
  ASSERT_EQ(q.status, 0) << q.output;
  EXPECT_TRUE(contains(q.output, "calibration 100.0% 200/200 images")) << q.output;
  EXPECT_TRUE(contains(q.output, "refinement 100.0%")) << q.output;
  const Result a = run("analyze --model " + d.file("q.fgm") + " --data mnist --images 50 --out " +
                       d.file("a"));
  ASSERT_EQ(a.status, 0) << a.output;
  EXPECT_TRUE(contains(a.output, "relevance 100.0% 50/50 images")) << a.output;
}
