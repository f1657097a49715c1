// flipguard inject: campaigns from the command line, their files, kills and resumes, MPI.
#include <flipguard/data.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/zoo.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

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
  EXPECT_TRUE(contains(r.output, "bit 8: ")) << r.output;
  r = run(base + " --bit top");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "msb, all or a bit position")) << r.output;
  save_model({build_zoo("mnist-cnn"), std::nullopt, {}}, d.file("f.fgm"));
  r = run("inject --model " + d.file("f.fgm") + " --data mnist --out " + d.file("y"));
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "not quantized")) << r.output;
  EXPECT_FALSE(fs::exists(d.file("y") + "/summary.json"));
}

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

// SIGTERM or SIGINT (Ctrl-C) stops a campaign at its next step: it writes its checkpoint, says
// where, exits with 128 + signal as the signal would have, and leaves no result and no temporary
// file; --resume then gives the uninterrupted result. Cone engine (steps of fault sets over a
// chunk of images) and reference engine (a fault set at a time).
TEST(Inject, ASignalStopsACampaignWithACheckpointThatResumes) {
  TempDir d;
  struct Case {
    std::string engine, options, rates, signal;
    int sig;
  };
  const std::vector<Case> cases = {
      {"cone", " --sites 2 --images 2000", "rates_site2.npy", "SIGTERM", SIGTERM},
      {"reference", " --sites 3 --bit all --images 4000", "rates_site3.npy", "SIGINT", SIGINT}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.engine);
    const std::string args = "inject --model " + kModel + " --data mnist --engine " + c.engine +
                             c.options + " --checkpoint-every 0 --out ";
    const std::string stopped = d.file(c.engine + "-stopped"), whole = d.file(c.engine + "-whole");
    const std::string log = d.file(c.engine + ".log");
    const pid_t pid = start_shell(std::string(FLIPGUARD_BINARY) + " " + args + stopped, log);
    ASSERT_TRUE(wait_for_file(pid, stopped + "/checkpoint.json"));
    kill(pid, c.sig);
    EXPECT_EQ(wait_status(pid), 128 + c.sig) << slurp(log);
    const std::string said = slurp(log);
    for (const std::string& part : {"stopped by " + c.signal, stopped + "/checkpoint.json",
                                    std::string("continue with --resume")})
      EXPECT_TRUE(contains(said, part)) << part << " not in: " << said;
    EXPECT_FALSE(fs::exists(stopped + "/summary.json"));
    for (const auto& e : fs::directory_iterator(stopped))
      EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.")) << e.path();
    Result r = run(args + stopped + " --resume");
    ASSERT_EQ(r.status, 0) << r.output;
    r = run(args + whole);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(slurp(stopped + "/" + c.rates), slurp(whole + "/" + c.rates));
  }
}

// SIGKILL (no chance to clean up) at random moments, again and again, each time resumed: the
// result files equal those of a run that went through, and no temporary file is left. An
// exhaustive campaign on the cone engine, a BER campaign on the reference engine, and an
// exhaustive one under mpirun -n 2 (the kill ends the whole job).
TEST(Inject, KilledAtRandomMomentsAndResumedGivesTheIdenticalResult) {
  const std::string mpiexec = FLIPGUARD_MPIEXEC;
  ASSERT_FALSE(mpiexec.empty()) << "built without MPI (FLIPGUARD_MPI=OFF)";
  const std::string mpirun = "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                             "OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none "
                             "OMPI_MCA_rmaps_base_oversubscribe=1 " +
                             mpiexec + " -n 2 ";
  const std::string flipguard = std::string(FLIPGUARD_BINARY) + " ";
  struct Case {
    std::string name, launch, options;
    std::vector<std::string> results;
  };
  const std::vector<Case> cases = {
      {"cone", flipguard, " --engine cone --sites 2 --images 2000", {"rates_site2.npy", "histogram.csv"}},
      {"ber", flipguard, " --engine reference --campaign ber --ber 1e-4,1e-3 --runs 12 --images 400",
       {"ber_rates.npy"}},
      {"mpi", mpirun + flipguard, " --engine cone --sites 1,2 --images 300",
       {"rates_site1.npy", "rates_site2.npy", "histogram.csv"}}};
  std::mt19937 rng(20261207);
  std::uniform_int_distribution<int> after_ms(300, 3000);
  TempDir d;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string args = "inject --model " + kModel + " --data mnist" + c.options +
                             " --checkpoint-every 0.2 --out ";
    const std::string killed = d.file(c.name + "-killed"), whole = d.file(c.name + "-whole");
    int kills = 0;
    for (int k = 0; k < 4; ++k) {
      const pid_t pid = start_shell(c.launch + args + killed + (k > 0 ? " --resume" : ""));
      usleep(static_cast<useconds_t>(after_ms(rng)) * 1000);
      kill_session(pid, SIGKILL);
      const int status = wait_status(pid);
      if (status == 0) break;  // it had ended
      ASSERT_EQ(status, 128 + SIGKILL);
      ++kills;
    }
    EXPECT_GE(kills, 1);
    Result r = run_shell("timeout 600 " + c.launch + args + killed + " --resume");
    ASSERT_EQ(r.status, 0) << r.output;
    r = run(args + whole);
    ASSERT_EQ(r.status, 0) << r.output;
    for (const std::string& f : c.results)
      EXPECT_EQ(slurp(killed + "/" + f), slurp(whole + "/" + f)) << f;
    for (const auto& e : fs::directory_iterator(killed)) {
      const std::string name = e.path().filename().string();
      EXPECT_FALSE(contains(name, ".tmp.") || contains(name, "checkpoint")) << name;
    }
  }
}

// --faults replays a list: a sampled campaign's samples.csv as is, and the same faults as a
// .npy array, give that campaign's failure rates fault for fault; a resume with another list is
// refused; options that choose faults themselves are refused beside it.
TEST(Inject, FaultsReplaysASampledCampaignsFaults) {
  TempDir d;
  const std::string base = "inject --model " + kModel + " --data mnist --images 300 --out ";
  Result r = run(base + d.file("sampled") + " --campaign sampled --error 0.08 --seed 5");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string samples = d.file("sampled") + "/samples.csv";
  r = run(base + d.file("replay") + " --faults " + samples);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "faults replayed")) << r.output;
  EXPECT_EQ(slurp(d.file("replay") + "/faults.csv"), slurp(samples));
  const auto summary = nlohmann::json::parse(slurp(d.file("replay") + "/summary.json"));
  EXPECT_EQ(summary["campaign"], "list");
  const auto sampled = nlohmann::json::parse(slurp(d.file("sampled") + "/summary.json"));
  EXPECT_EQ(summary["overall"]["mean"], sampled["overall"]["mean"]);
  // The same faults as a (n, 3) int64 array, on the reference engine.
  std::vector<int64_t> rows;
  std::istringstream in(slurp(samples));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    for (std::string c; std::getline(ls, c, ',');) cells.push_back(c);
    ASSERT_EQ(cells.size(), 5u) << line;
    for (int k : {0, 2, 3}) rows.push_back(std::stoll(cells[k]));
  }
  const std::string npy = d.file("faults.npy");
  std::ofstream(npy, std::ios::binary) << npy_bytes(rows, {static_cast<int64_t>(rows.size() / 3), 3});
  r = run(base + d.file("npy") + " --faults " + npy + " --engine reference");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(slurp(d.file("npy") + "/faults.npy"), slurp(d.file("sampled") + "/samples.npy"));
  r = run(base + d.file("npy") + " --faults " + npy + " --sites 1");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "--faults names the faults itself")) << r.output;
  r = run(base + d.file("npy") + " --campaign list");
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.output, "give the file")) << r.output;
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
