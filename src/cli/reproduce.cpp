// flipguard reproduce: the study of section V-E from a reference model. Every stage is one
// flipguard command (harden, inject), run as a child process and recorded in results.json, so
// each number can be reproduced on its own; a stage whose result exists is kept, an interrupted
// campaign or feature optimization continues from its checkpoint.
#include "cli.hpp"

#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace flipguard::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct ReproduceArgs {
  std::string benchmark, out, models = "models";
  int64_t images = 0, ber_images = 1000, runs = 100;
  double bin_width = 0;
  // feature optimization
  int iterations = 5;
  std::string until = "float-baseline";
  int finetune_epochs = 1;
  double lr = 0.001;
  int64_t limit = 0, relevance_images = 1000, calibration_images = 1000;
  int64_t test_images = 0;  ///< accuracies on the first N test images (0: all)
  int64_t range_images = 10000;  ///< training images that give the ranges
  // imagenet-sample
  std::string torchscript;       ///< the pre-trained module (default: data_dir()/squeezenet1_1.pt)
  int top_features = 4, positions = 48;  ///< the limited MSB campaigns (V-E2)
  int batch_size = 32;           ///< Algorithm 1's fine-tuning mini-batch
  /// What Algorithm 1's fine-tuning learns: labels, or teacher (distillation from the starting
  /// model); auto: teacher for imagenet-sample (a thousand images, one a class), labels otherwise.
  std::string finetune_target = "auto";
};

/// The models of a study, in order, and the model its optimizations start from: the paper's
/// original, architecture- and feature-optimized models, then the range restriction (Ranger) as
/// a baseline, of the optimizations' starting model alone and combined with feature optimization.
/// ILSVRC has no architectural optimization (V-E1: SqueezeNet's bottlenecks are not critical).
struct Study {
  std::vector<std::string> stages;
  std::string base;
  std::string title(const std::string& s) const {
    if (s == "ranges") return title(base) + " + ranges";
    static const std::map<std::string, std::string> titles{
        {"original", "original"},
        {"architecture", "architecture-optimized"},
        {"features", "feature-optimized"},
        {"features_ranges", "feature-optimized + ranges"}};
    return titles.at(s);
  }
};

Study study_of(const std::string& benchmark) {
  if (benchmark == "imagenet-sample") return {{"original", "features", "ranges", "features_ranges"}, "original"};
  return {{"original", "architecture", "features", "ranges", "features_ranges"}, "architecture"};
}

std::string quote(const std::string& s) {
  if (s.find_first_of(" \t\"'\\$") == std::string::npos) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string join_args(const std::vector<std::string>& args) {
  std::string s = "flipguard";
  for (const auto& a : args) s += " " + quote(a);
  return s;
}

/// Records the stage's command `flipguard ARGS` and, unless its result is `done` already, runs it
/// (this program, as a child process; with --resume when `resume`); throws Error when it fails.
void run_stage(const std::string& what, std::vector<std::string> args, bool done, bool resume,
               json& commands) {
  commands.push_back({{"stage", what}, {"command", join_args(args)}, {"kept", done}});
  if (done) {
    log("reproduce: " + what + ": kept (its result exists)");
    return;
  }
  if (resume) args.push_back("--resume");
  args.insert(args.begin(), {"--threads", std::to_string(torch::get_num_threads())});
  const std::string line = join_args(args);
  log("reproduce: " + what + ": " + line);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<char*> argv{const_cast<char*>(self.c_str())};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) fail("reproduce: cannot start the ", what, " stage");
  if (pid == 0) {
    execv(self.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("reproduce: the ", what, " stage failed (",
         WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                           : std::string("killed by a signal"),
         "): ", line, "; run `flipguard reproduce` again with the same options to continue");
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) fail("reproduce: cannot read ", p.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail("reproduce: ", p.string(), " is not valid JSON: ", e.what());
  }
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

/// The failure rates of an exhaustive campaign's directory, each rates_siteK.npy read once.
struct CampaignRates {
  json summary;              ///< its summary.json
  std::vector<double> all;   ///< every rate, site after site (the evaluated neurons only)
  /// Per site label: SD(rate/mean) of the features' largest rates (feature_rates,
  /// normalized_sd), the measured counterpart of Fig. 5b that eq. 6 aims to lower (README.md,
  /// "Why the worst case rises in site 3"); NaN where a campaign limited by --top-features left
  /// neurons unmeasured (NaN) or where nothing failed.
  std::map<std::string, double> feature_spread;
};

CampaignRates campaign_rates(const fs::path& dir) {
  CampaignRates c;
  c.summary = read_json(dir / "summary.json");
  for (const auto& s : c.summary.at("sites")) {
    const std::string label = s.at("label");
    const std::string file = (dir / ("rates_" + label + ".npy")).string();
    const NpyArray a = read_npy(file);
    if (a.shape.size() != 3)
      fail("reproduce: ", file, " has ", a.shape.size(), " dimensions: expected C x H x W");
    bool complete = true;
    for (double v : a.data) {
      if (std::isnan(v)) complete = false;
      else c.all.push_back(v);
    }
    const auto t = torch::tensor(a.data, torch::kFloat64).reshape(a.shape);
    c.feature_spread[label] =
        complete ? normalized_sd(torch::tensor(feature_rates(t).max, torch::kFloat64)) : std::nan("");
  }
  return c;
}

/// Site by site, two exhaustive campaigns of the same network (before and after feature
/// optimization): worst and mean failure rate and the features' spread (CampaignRates).
json site_comparison(const CampaignRates& before, const CampaignRates& after) {
  json out = json::array();
  for (const auto& s : before.summary.at("sites")) {
    const std::string label = s.at("label");
    for (const auto& t : after.summary.at("sites"))
      if (t.at("label") == label)
        out.push_back({{"site", label},
                       {"name", s.at("name")},
                       {"worst_case", {s.at("worst_case"), t.at("worst_case")}},
                       {"mean", {s.at("mean"), t.at("mean")}},
                       {"feature_spread", {number_or_null(before.feature_spread.at(label)),
                                           number_or_null(after.feature_spread.at(label))}}});
  }
  return out;
}

/// 1 - after / before: the relative reduction (NaN when before is 0).
double reduction(double before, double after) {
  return before > 0 ? 1.0 - after / before : std::nan("");
}

/// Fig. 3/4: the histograms of two campaigns on common bins, log counts.
Plot histogram_plot(const std::string& title, const std::vector<std::string>& names,
                    const std::vector<std::vector<double>>& rates, double width) {
  Plot p;
  p.title = title;
  p.xlabel = "failure rate (%)";
  p.ylabel = "neurons";
  p.logy = true;
  double worst = 0;
  for (const auto& r : rates)
    for (double v : r) worst = std::max(worst, v);
  const size_t shown = static_cast<size_t>(worst / width) + 1;
  for (size_t i = 0; i < rates.size(); ++i) {
    const auto h = rate_histogram(rates[i], width);
    Series s;
    s.title = names[i];
    s.style = "histeps";
    for (size_t k = 0; k < shown && k < h.size(); ++k) {
      s.x.push_back(100 * (k + 0.5) * width);
      s.y.push_back(static_cast<double>(h[k]));
    }
    p.series.push_back(s);
  }
  p.xmin = 0;
  p.xmax = 100 * shown * width;
  return p;
}


void write_text(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream o(tmp, std::ios::binary);
    o << text;
    if (!o) fail("cannot write ", tmp.string());
  }
  fs::rename(tmp, p);
}

void run_reproduce(const ReproduceArgs& a) {
  const Study study = study_of(a.benchmark);
  const bool ilsvrc = a.benchmark == "imagenet-sample";
  const std::string data = ilsvrc ? "imagenet" : a.benchmark;
  const std::string arch = a.benchmark == "cifar10" ? "cifar-cnn" : "mnist-cnn";
  const fs::path dir(a.out);
  const std::string torchscript =
      a.torchscript.empty() ? (fs::path(data_dir()) / "squeezenet1_1.pt").string() : a.torchscript;
  // ILSVRC starts from the pre-trained TorchScript module, imported and quantized here.
  const fs::path ref = ilsvrc ? dir / "original.fgm"
                              : fs::path(a.models) / (arch + "-" + a.benchmark + "-q8.fgm");
  if (ilsvrc && !fs::exists(torchscript))
    fail("reproduce: the pre-trained module ", torchscript, " is missing (`./run setup` copies ",
         "../shared/data/squeezenet1_1.pt there; --torchscript PATH names another)");
  if (!ilsvrc && !fs::exists(ref))
    fail("reproduce: the reference model ", ref.string(), " is missing (models/README.md says ",
         "how it is made; --models DIR names another folder)");
  // Kept stages must come from the same study: its options are recorded at the start.
  json options = {{"benchmark", a.benchmark}, {"reference_model", ref.string()},
                        {"images", a.images}, {"ber_images", a.ber_images}, {"runs", a.runs},
                        {"bin_width", a.bin_width}, {"iterations", a.iterations},
                        {"until_accuracy", a.until}, {"finetune_epochs", a.finetune_epochs},
                        {"lr", a.lr}, {"limit", a.limit}, {"relevance_images", a.relevance_images},
                        {"calibration_images", a.calibration_images},
                        {"test_images", a.test_images}};
  if (a.range_images != 10000) options["range_images"] = a.range_images;
  if (ilsvrc) {
    options["torchscript"] = torchscript;
    options["top_features"] = a.top_features;
    options["positions"] = a.positions;
    options["batch_size"] = a.batch_size;
  }
  const std::string target =
      a.finetune_target != "auto" ? a.finetune_target : ilsvrc ? "teacher" : "labels";
  if (target != "labels") options["finetune_target"] = target;
  if (fs::exists(dir / "study.json")) {
    const json before = read_json(dir / "study.json");
    if (before != options)
      fail("reproduce: '", a.out, "' holds a study with other options (", before.dump(),
           "); this one is ", options.dump(), ": use another --out, or the same options to continue it");
  }
  fs::create_directories(dir / "campaigns");
  write_json((dir / "study.json").string(), options);
  json commands = json::array();
  std::map<std::string, std::string> model{{"original", ref.string()}};
  for (const auto& s : study.stages)
    if (s != "original") model[s] = (dir / (s + ".fgm")).string();
  if (ilsvrc) {
    // Import (the class scores checked against LibTorch's run of the module), then 8 bits without
    // quantize's refinement, which takes hours on SqueezeNet's 59 tensors.
    const std::string imported = (dir / "float.fgm").string();
    run_stage("import", {"import", "--torchscript", torchscript, "--input", "3x224x224", "--out", imported},
              fs::exists(imported), false, commands);
    run_stage("quantize", {"quantize", "--model", imported, "--data", data, "--out", ref.string(),
                           "--calibration-images", std::to_string(a.calibration_images), "--no-refine"},
              fs::exists(ref), false, commands);
  } else {
    // Architectural optimization (IV-A).
    run_stage("architecture", {"harden", "--method", "architecture", "--model", ref.string(),
                               "--data", data, "--out", model["architecture"]},
              fs::exists(model["architecture"]), false, commands);
  }
  // Algorithm 1 (IV-B) on the optimizations' starting model.
  std::vector<std::string> f{"harden", "--method", "features", "--model", model[study.base],
                             "--data", data, "--out", model["features"], "--report",
                             (dir / "features").string(), "--iterations",
                             std::to_string(a.iterations), "--finetune-epochs",
                             std::to_string(a.finetune_epochs), "--lr", format_number(a.lr),
                             "--limit", std::to_string(a.limit), "--relevance-images",
                             std::to_string(a.relevance_images), "--calibration-images",
                             std::to_string(a.calibration_images), "--test-images",
                             std::to_string(a.test_images)};
  if (!a.until.empty()) f.insert(f.end(), {"--until-accuracy", a.until});
  if (target != "labels") f.insert(f.end(), {"--finetune-target", target});
  // The sample is both the fine-tuning and the test set: augmented, in small batches of 224x224.
  if (ilsvrc)
    f.insert(f.end(), {"--no-refine", "--augment", "on", "--batch-size", std::to_string(a.batch_size)});
  run_stage("features", f, fs::exists(model["features"]), fs::exists(model["features"] + ".ckpt"),
            commands);
  // The baseline: every site clamped where it is read to its range on training images.
  for (const auto& [out, from] : {std::pair<std::string, std::string>{"ranges", study.base},
                                  {"features_ranges", "features"}})
    run_stage(out, {"harden", "--method", "ranges", "--model", model[from], "--data", data,
                    "--out", model[out], "--range-images", std::to_string(a.range_images),
                    "--test-images", std::to_string(a.test_images)},
              fs::exists(model[out]), false, commands);
  // The campaigns of every model.
  for (const auto& s : study.stages) {
    for (const std::string kind : {"msb", "ber"}) {
      const fs::path cdir = dir / "campaigns" / (s + "-" + kind);
      std::vector<std::string> c{"inject", "--model", model[s], "--data", data, "--out", cdir.string()};
      if (kind == "msb") {
        c.insert(c.end(), {"--images", std::to_string(a.images), "--bin-width", format_number(a.bin_width)});
        // V-E2: 48 positions in each of the four most critical feature maps by eq. 5.
        if (ilsvrc)
          c.insert(c.end(), {"--top-features", std::to_string(a.top_features), "--positions",
                             std::to_string(a.positions), "--relevance-images",
                             std::to_string(a.relevance_images)});
      } else {
        c.insert(c.end(), {"--campaign", "ber", "--images", std::to_string(a.ber_images), "--runs",
                           std::to_string(a.runs)});
      }
      run_stage(s + " " + kind + " campaign", c, fs::exists(cdir / "summary.json"),
                fs::exists(cdir / "checkpoint.json"), commands);
    }
  }

  // Collect.
  const DataSpec spec = parse_data_spec(data);
  const Dataset test = load_dataset(spec, Split::Test).head(a.test_images);
  json r = {{"benchmark", a.benchmark}, {"reference_model", ref.string()}, {"command", command_line()},
            {"base", study.base}};
  r["exhaustive_scope"] =
      ilsvrc ? "on " + std::to_string(a.positions) + " positions in each of the " +
                   std::to_string(a.top_features) +
                   " most critical feature maps by eq. 5 (each model's own), as the paper's ILSVRC study"
             : "over every neuron of every site";
  if (ilsvrc)
    r["limitation"] = "the 1,000-image sample is both the fine-tuning set of Algorithm 1 and the "
                      "test set of every accuracy and campaign; the paper fine-tuned on ILSVRC's "
                      "training set and tested on its validation set";
  r["stages"] = json::array();
  for (const auto& s : study.stages) r["stages"].push_back({{"key", s}, {"title", study.title(s)}});
  std::map<std::string, CampaignRates> campaigns;
  for (const auto& s : study.stages) {
    const Model m = load_model(model[s]);
    if (!m.quant) fail("reproduce: ", model[s], " is not quantized");
    r["models"][s] = {{"file", model[s]},
                      {"arch", m.net.arch},
                      {"float_accuracy", float_accuracy(m.net, test.images, test.labels)},
                      {"quantized_accuracy",
                       QuantizedNetwork(m.net, *m.quant).accuracy(test.images, test.labels)}};
    const fs::path cdir = dir / "campaigns" / (s + "-msb");
    campaigns[s] = campaign_rates(cdir);
    const json& sum = campaigns[s].summary;
    r["exhaustive"][s] = {{"dir", cdir.string()},
                          {"images", sum["golden"]["images"]},
                          {"correct_images", sum["golden"]["correct"]},
                          {"faults", sum["overall"]["faults"]},
                          {"worst_case", sum["overall"]["worst_case"]},
                          {"mean", sum["overall"]["mean"]},
                          {"worst_fault", sum["overall"]["worst_fault"]}};
  }
  auto worst = [&](const std::string& s) { return r["exhaustive"][s]["worst_case"].get<double>(); };
  auto mean = [&](const std::string& s) { return r["exhaustive"][s]["mean"].get<double>(); };
  auto reductions = [&](const std::string& before, const std::string& after) {
    return json{{"worst_case_reduction", number_or_null(reduction(worst(before), worst(after)))},
                {"mean_reduction", number_or_null(reduction(mean(before), mean(after)))}};
  };
  if (!ilsvrc) r["architecture_optimization"] = reductions("original", "architecture");
  const json feat = read_json(dir / "features" / "features.json");
  r["feature_optimization"] = reductions(study.base, "features");
  r["feature_optimization"].update({{"iterations", feat["iterations"]},
                                    {"float_baseline", feat["float_baseline"]},
                                    {"reached_baseline", feat["reached_baseline"]},
                                    {"history", feat["history"]}});
  r["feature_optimization"]["sites"] = site_comparison(campaigns[study.base], campaigns["features"]);
  r["range_restriction"] = reductions(study.base, "ranges");
  r["features_and_ranges"] = reductions(study.base, "features_ranges");
  r["combined"] = reductions("original", "features");
  // Bit error rates.
  json ber = {{"rates", json::array()}, {"images", a.ber_images}, {"runs", a.runs}};
  for (const auto& s : study.stages) {
    const json sum = read_json(dir / "campaigns" / (s + "-ber") / "summary.json");
    ber[s] = json::array();
    ber["rates"] = json::array();
    for (const auto& b : sum.at("ber")) {
      ber["rates"].push_back(b["ber"]);
      ber[s].push_back(b["mean"]);
    }
  }
  std::vector<std::pair<std::string, std::string>> pairs{{"original", "features"},
                                                         {study.base, "ranges"},
                                                         {study.base, "features_ranges"}};
  if (!ilsvrc)
    pairs.insert(pairs.begin(), {{"original", "architecture"}, {"architecture", "features"}});
  for (const auto& [before, after] : pairs) {
    const std::string key = after + "_vs_" + before;
    json red = json::array();
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < ber["rates"].size(); ++i) {
      const double v = reduction(ber[before][i].get<double>(), ber[after][i].get<double>());
      red.push_back(number_or_null(v));
      if (std::isfinite(v)) sum += v, ++n;
    }
    ber["relative_reduction"][key] = red;
    ber["mean_relative_reduction"][key] = n ? json(sum / n) : json(nullptr);
  }
  r["ber"] = ber;

  // Figures.
  double worst_all = 0;
  for (const auto& s : study.stages) worst_all = std::max(worst_all, worst(s));
  const double width =
      a.bin_width > 0 ? a.bin_width
                      : auto_bin_width(worst_all, r["exhaustive"]["original"]["correct_images"].get<int64_t>());
  std::vector<std::string> warnings;
  auto figure = [&](const std::string& key, const Plot& p) {
    const std::string why = render_plot(p, (dir / (key + ".gp")).string(), (dir / (key + ".svg")).string());
    if (!why.empty()) warnings.push_back(key + ".svg not rendered: " + why);
    r["figures"][key] = key + ".svg";
  };
  if (!ilsvrc)
    figure("fig3a_architecture_histogram",
           histogram_plot("MSB flips: original vs architecture-optimized",
                          {"original", "architecture-optimized"},
                          {campaigns["original"].all, campaigns["architecture"].all}, width));
  figure(ilsvrc ? "fig6_features_histogram" : "fig3b_features_histogram",
         histogram_plot("MSB flips: " + study.title(study.base) + " vs feature-optimized",
                        {study.title(study.base), "feature-optimized"},
                        {campaigns[study.base].all, campaigns["features"].all}, width));
  figure("ranges_histogram",
         histogram_plot("MSB flips: range restriction beside feature optimization",
                        {study.title(study.base), "+ ranges", "feature-optimized + ranges"},
                        {campaigns[study.base].all, campaigns["ranges"].all, campaigns["features_ranges"].all}, width));
  Plot fb;
  fb.title = "Failure rate under random bit flips (Fig. 7)";
  fb.xlabel = "bit error rate";
  fb.ylabel = "mean failure rate (%)";
  fb.logx = true;
  for (const auto& s : study.stages) {
    Series se;
    se.title = study.title(s);
    se.style = "linespoints";
    for (size_t i = 0; i < ber["rates"].size(); ++i) {
      se.x.push_back(ber["rates"][i].get<double>());
      se.y.push_back(100 * ber[s][i].get<double>());
    }
    fb.series.push_back(se);
  }
  figure("fig7_ber", fb);
  r["figures"]["fig5a_accuracy"] = "features/fig5a_accuracy.svg";
  r["figures"]["fig5b_criticality_sd"] = "features/fig5b_criticality_sd.svg";
  r["commands"] = commands;
  r["options"] = options;
  r["bin_width"] = width;
  for (const auto& w : warnings) log("warning: " + w);
  write_json((dir / "results.json").string(), r);
  write_text(dir / "report.html", study_report_html(r, dir.string()));

  std::printf("%-32s %-10s %-10s %-10s %s\n", "model", "8-bit acc", "worst", "mean", "file");
  for (const auto& s : study.stages)
    std::printf("%-32s %-10s %-10s %-10s %s\n", study.title(s).c_str(),
                percent(r["models"][s]["quantized_accuracy"]).c_str(),
                percent(r["exhaustive"][s]["worst_case"]).c_str(), percent(r["exhaustive"][s]["mean"]).c_str(),
                model[s].c_str());
  std::printf("worst-case reduction: %sfeatures %s, ranges %s, features + ranges %s; mean BER "
              "reduction (optimized vs original) %s\n",
              ilsvrc ? "" : ("architecture " + percent(r["architecture_optimization"]["worst_case_reduction"]) + ", ").c_str(),
              percent(r["feature_optimization"]["worst_case_reduction"]).c_str(),
              percent(r["range_restriction"]["worst_case_reduction"]).c_str(),
              percent(r["features_and_ranges"]["worst_case_reduction"]).c_str(),
              percent(ber["mean_relative_reduction"]["features_vs_original"]).c_str());
  std::printf("wrote %s/results.json and %s/report.html\n", a.out.c_str(), a.out.c_str());
}

}  // namespace

void add_reproduce(CLI::App& app, Action& action) {
  auto a = std::make_shared<ReproduceArgs>();
  auto* cmd = app.add_subcommand(
      "reproduce", "the paper's study (V-E): original, architecture- and feature-optimized "
                   "models, exhaustive MSB and bit error rate campaigns, results.json, report.html");
  cmd->add_option("--benchmark", a->benchmark,
                  "mnist, fashion-mnist, cifar10, or imagenet-sample (SqueezeNet 1.1 on the "
                  "1,000-image ILSVRC sample, from its TorchScript module)")
      ->required()
      ->check(CLI::IsMember({"mnist", "fashion-mnist", "cifar10", "imagenet-sample"}));
  cmd->add_option("--out", a->out, "directory of the study (kept stages are reused)")->required();
  cmd->add_option("--models", a->models,
                  "folder of the reference models (<arch>-<benchmark>-q8.fgm)")
      ->capture_default_str();
  cmd->add_option("--images", a->images, "test images of the exhaustive campaigns (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--ber-images", a->ber_images, "test images of the bit error rate campaigns")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--runs", a->runs, "runs per bit error rate (the paper: 1000)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--bin-width", a->bin_width, "histogram bin width (0: automatic)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--iterations", a->iterations, "Algorithm 1: the most iterations")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--until-accuracy", a->until,
                  "Algorithm 1's stopping rule (float-baseline; empty: run every iteration)")
      ->check(CLI::IsMember({"", "float-baseline"}))
      ->capture_default_str();
  cmd->add_option("--finetune-epochs", a->finetune_epochs, "Algorithm 1: epochs per fine-tuning")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--finetune-target", a->finetune_target,
                  "Algorithm 1: what the fine-tuning learns: labels, teacher (distillation from "
                  "the starting model), or auto (teacher for imagenet-sample, labels otherwise)")
      ->check(CLI::IsMember({"auto", "labels", "teacher"}))
      ->capture_default_str();
  cmd->add_option("--lr", a->lr, "Algorithm 1: fine-tuning learning rate")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--limit", a->limit, "Algorithm 1: first N training images only (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--relevance-images", a->relevance_images, "Algorithm 1: images of D (eq. 3)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--calibration-images", a->calibration_images,
                  "Algorithm 1: images that choose the formats")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--test-images", a->test_images,
                  "accuracies (and Algorithm 1's baseline) on the first N test images (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--range-images", a->range_images,
                  "training images on which the range restriction takes every site's range")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--torchscript", a->torchscript,
                  "imagenet-sample: the pre-trained module (default: squeezenet1_1.pt in "
                  "$FLIPGUARD_DATA_DIR, where ./run setup copies it)");
  cmd->add_option("--top-features", a->top_features,
                  "imagenet-sample: MSB campaigns on the K most critical feature maps (eq. 5)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--positions", a->positions,
                  "imagenet-sample: neurons drawn in each of those maps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "imagenet-sample: Algorithm 1's fine-tuning mini-batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([&action, a] { action = [a] { run_reproduce(*a); }; });
}

}  // namespace flipguard::cli
