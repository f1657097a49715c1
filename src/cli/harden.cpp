// flipguard harden: resilience optimization of the network itself (section IV).
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

namespace flipguard::cli {

namespace {
struct HardenArgs {
  std::string model, data, out, method = "architecture";
  ArchitectureOptions arch;
  int64_t check_images = 500;
  // features
  FeatureOptions features;
  std::string until, augment = "auto", report_dir, checkpoint, finetune_target = "labels";
  bool resume = false;
  int64_t limit = 0, test_images = 0;
  // ranges
  int64_t range_images = 10000;
};

/// Largest absolute difference of the float class scores of two networks on test images.
double max_score_difference(const Network& a, const Network& b, const Dataset& test) {
  torch::NoGradGuard no_grad;
  const auto x = a.preprocess(test.images);
  return (a.forward(x) - b.forward(x)).abs().max().item<double>();
}

void run_architecture(const HardenArgs& a) {
  Model m = load_model(a.model);
  if (m.quant && a.data.empty())
    fail("'", a.model, "' is quantized: --data is needed to choose the formats of the "
         "changed sites (or harden the float model and quantize it afterwards)");
  ArchitectureReport report;
  const Network net = optimize_architecture(m.net, report, a.arch);
  nlohmann::json found = nlohmann::json::array();
  for (const Bottleneck& b : report.bottlenecks) {
    std::printf("bottleneck: block %d '%s' %s (%lld neurons, median site %lld): %s\n", b.block,
                b.name.c_str(), b.shape.str().c_str(), (long long)b.shape.numel(),
                (long long)b.median_neurons, b.action.c_str());
    found.push_back({{"block", b.block}, {"name", b.name}, {"shape", b.shape.str()},
                     {"neurons", b.shape.numel()}, {"median_neurons", b.median_neurons},
                     {"fixed", b.fixed}, {"action", b.action}});
  }
  if (report.bottlenecks.empty())
    std::printf("no bottleneck site (ratio %g of the median site)\n", a.arch.bottleneck_ratio);
  nlohmann::json meta = m.meta;
  meta["harden"] = {{"method", a.method}, {"command", command_line()}, {"from", a.model},
                    {"bottlenecks", found}, {"moved", report.moved}};
  Model out{net, std::nullopt, meta};
  if (!a.data.empty()) {
    const DataSpec spec = parse_data_spec(a.data);
    const Dataset test = load_dataset(spec, Split::Test);
    check_images(m.net, test.images, test.name);
    const double diff = max_score_difference(m.net, net, test.head(a.check_images));
    std::printf("float class scores on %lld test images: largest difference %.3g\n",
                (long long)std::min<int64_t>(a.check_images, test.size()), diff);
    out.meta["harden"]["max_float_score_difference"] = diff;
    out.meta["float_test_accuracy"] = float_accuracy(net, test.images, test.labels);
    if (m.quant) {
      QuantOptions q;
      q.bits = m.quant->input.bits;
      q.is_signed = m.quant->act.empty() || m.quant->act.front().is_signed;
      const Dataset calib = load_dataset(spec, Split::Train).head(q.calibration_images);
      out.quant = calibrate(net, calib.images, q);
      const double qacc = QuantizedNetwork(net, *out.quant).accuracy(test.images, test.labels);
      out.meta["quantized_test_accuracy"] = qacc;
      std::printf("re-quantized (%d-bit, %s): test accuracy %.2f%%\n", q.bits,
                  q.is_signed ? "signed" : "unsigned", 100 * qacc);
    }
    std::printf("float test accuracy %.2f%%\n", 100 * out.meta["float_test_accuracy"].get<double>());
  }
  save_model(out, a.out);
  std::printf("wrote %s (%s): %d pooling%s moved\n", a.out.c_str(), net.arch.c_str(),
              report.moved, report.moved == 1 ? "" : "s");
}

// --- feature optimization (Algorithm 1) ---------------------------------------------------------

nlohmann::json to_json(const FeatureIteration& it) {
  return {{"iteration", it.iteration},
          {"quantized_accuracy", it.quantized_accuracy},
          {"float_accuracy", it.float_accuracy},
          {"mean_sd", it.mean_sd},
          {"sites", it.sites},
          {"site_sd", it.site_sd},
          {"finetune_train_accuracy",
           it.finetune_train_accuracy < 0 ? nlohmann::json(nullptr)
                                          : nlohmann::json(it.finetune_train_accuracy)},
          {"seconds", it.seconds}};
}

FeatureIteration iteration_from_json(const nlohmann::json& j) {
  FeatureIteration it;
  it.iteration = j.at("iteration").get<int>();
  it.quantized_accuracy = j.at("quantized_accuracy").get<double>();
  it.float_accuracy = j.at("float_accuracy").get<double>();
  it.mean_sd = j.at("mean_sd").get<double>();
  it.sites = j.at("sites").get<std::vector<int>>();
  it.site_sd = j.at("site_sd").get<std::vector<double>>();
  const auto& f = j.at("finetune_train_accuracy");
  it.finetune_train_accuracy = f.is_null() ? -1 : f.get<double>();
  it.seconds = j.at("seconds").get<double>();
  return it;
}

/// What must agree between a checkpoint and the run that resumes it (all but --iterations).
std::string features_signature(const HardenArgs& a) {
  const FeatureOptions& o = a.features;
  std::ostringstream s;
  s << "from=" << a.model << " data=" << a.data << " relevance_images=" << o.relevance_images
    << " input_rule=" << to_string(o.relevance.input_rule) << " calibration_images="
    << o.quant.calibration_images << " finetune_epochs=" << o.finetune.epochs
    << " lr=" << o.finetune.lr << " batch=" << o.finetune.batch_size
    << " wd=" << o.finetune.weight_decay << " augment=" << a.augment
    << " seed=" << o.finetune.seed << " until=" << a.until << " limit=" << a.limit
    << " test_images=" << a.test_images;
  if (!o.quant.refine) s << " refine=0";
  if (a.finetune_target != "labels")
    s << " target=" << a.finetune_target << " temperature=" << o.finetune.temperature;
  return s.str();
}

Plot accuracy_plot(const FeatureState& st, double baseline) {
  Plot p;
  p.title = "Fig. 5a: 8-bit test accuracy right after each adjustment";
  p.xlabel = "iteration";
  p.ylabel = "test accuracy (%)";
  Series acc{"8-bit, after the adjustment", {}, {}, {}, {}, "linespoints"};
  Series base{"float baseline (original model)", {}, {}, {}, {}, "lines"};
  for (const FeatureIteration& it : st.history) {
    acc.x.push_back(it.iteration);
    acc.y.push_back(100 * it.quantized_accuracy);
    base.x.push_back(it.iteration);
    base.y.push_back(100 * baseline);
  }
  p.series = {acc, base};
  return p;
}

Plot spread_plot(const FeatureState& st) {
  Plot p;
  p.title = "Fig. 5b: mean over sites of SD(eta / mean(eta))";
  p.xlabel = "iteration";
  p.ylabel = "mean SD of normalized criticality";
  Series sd{"after the adjustment", {}, {}, {}, {}, "linespoints"};
  for (const FeatureIteration& it : st.history) {
    sd.x.push_back(it.iteration);
    sd.y.push_back(it.mean_sd);
  }
  p.series = {sd};
  return p;
}

std::string default_report_dir(const std::string& out) {
  std::filesystem::path p(out);
  return (p.parent_path() / (p.stem().string() + ".features")).string();
}

void run_features(HardenArgs a) {
  if (a.data.empty()) fail("--method features needs --data: it fine-tunes on the training images");
  Model m = load_model(a.model);
  const DataSpec spec = parse_data_spec(a.data);
  const Dataset train = load_dataset(spec, Split::Train).head(a.limit);
  const Dataset test = load_dataset(spec, Split::Test).head(a.test_images);
  check_images(m.net, test.images, test.name);
  FeatureOptions& o = a.features;
  set_augment(a.augment, spec.name, o.finetune);
  if (a.finetune_target == "teacher") o.finetune.teacher = m.net;
  o.until_baseline = a.until == "float-baseline";
  if (a.checkpoint.empty()) a.checkpoint = a.out + ".ckpt";
  const std::string report_dir = a.report_dir.empty() ? default_report_dir(a.out) : a.report_dir;
  const std::string signature = features_signature(a);

  if (m.quant) {  // re-calibration keeps the input model's word length and signedness
    o.quant.bits = m.quant->input.bits;
    o.quant.is_signed = m.quant->act.empty() || m.quant->act.front().is_signed;
  }
  FeatureState st;
  if (a.resume) {
    Model c = load_model(a.checkpoint);
    const auto& j = c.meta.value("features_state", nlohmann::json());
    if (!j.is_object() || !c.quant)
      fail("cannot resume: '", a.checkpoint, "' is not a feature-optimization checkpoint");
    if (j.at("signature").get<std::string>() != signature)
      fail("cannot resume from '", a.checkpoint, "': it was written by a run with other options (",
           j.at("signature").get<std::string>(), "), this run is ", signature);
    st.net = c.net;
    st.formats = *c.quant;
    st.done = j.at("done").get<int>();
    o.baseline = j.at("baseline").get<double>();
    for (const auto& it : j.at("history")) st.history.push_back(iteration_from_json(it));
    if (st.done >= o.iterations)
      fail("cannot resume: the checkpoint has ", st.done, " fine-tuned iterations, --iterations ",
           o.iterations, " would have ended before the last of them");
    log("resumed from " + a.checkpoint + " after iteration " + std::to_string(st.done));
  } else {
    st.net = m.net;
    o.baseline = float_accuracy(m.net, test.images, test.labels);
    if (m.quant) {
      st.formats = *m.quant;
    } else {
      log("'" + a.model + "' is a float model: quantizing it first (" +
          std::to_string(o.quant.bits) + "-bit, signed)");
      st.formats =
          calibrate(m.net, train.head(o.quant.calibration_images).images, o.quant);
    }
  }
  char line[200];
  std::snprintf(line, sizeof line, "feature optimization of %s: float baseline %.2f%% on %lld test images, %d iteration%s%s",
                m.net.arch.c_str(), 100 * o.baseline, (long long)test.size(), o.iterations,
                o.iterations == 1 ? "" : "s", o.until_baseline ? " at most" : "");
  log(line);

  auto checkpoint = [&](const FeatureState& s) {
    nlohmann::json hist = nlohmann::json::array();
    for (const auto& it : s.history) hist.push_back(to_json(it));
    Model c{s.net, s.formats, m.meta};
    c.meta["features_state"] = {{"signature", signature}, {"done", s.done},
                                {"baseline", o.baseline}, {"history", hist}};
    save_model(c, a.checkpoint);
  };
  st = optimize_features(std::move(st), train, test, o, log, checkpoint);

  nlohmann::json hist = nlohmann::json::array();
  for (const auto& it : st.history) hist.push_back(to_json(it));
  const FeatureIteration& last = st.history.back();
  const FeatureIteration& first = st.history.front();
  const bool reached = last.quantized_accuracy >= o.baseline;
  nlohmann::json summary = {
      {"method", "features"},
      {"command", command_line()},
      {"from", a.model},
      {"data", spec.name},
      {"iterations", st.done},
      {"until_accuracy", a.until.empty() ? nlohmann::json(nullptr) : nlohmann::json(a.until)},
      {"float_baseline", o.baseline},
      {"reached_baseline", reached},
      {"quantized_accuracy_before", first.quantized_accuracy},
      {"quantized_accuracy_after", last.quantized_accuracy},
      {"mean_sd_before", first.mean_sd},
      {"mean_sd_after", last.mean_sd},
      {"relevance_images", std::min(o.relevance_images, train.size())},
      {"train_images", train.size()},
      {"test_images", test.size()},
      {"finetune", {{"epochs", o.finetune.epochs}, {"lr", o.finetune.lr},
                    {"batch_size", o.finetune.batch_size},
                    {"weight_decay", o.finetune.weight_decay}, {"augment", a.augment},
                    {"target", a.finetune_target},
                    {"temperature", o.finetune.teacher ? nlohmann::json(o.finetune.temperature)
                                                       : nlohmann::json(nullptr)},
                    {"gradient", "straight-through through the rounding, zero where saturated"}}},
      {"history", hist}};
  Model out{st.net, st.formats, m.meta};
  out.meta["harden"] = summary;
  out.meta["float_test_accuracy"] = last.float_accuracy;
  out.meta["quantized_test_accuracy"] = last.quantized_accuracy;

  std::filesystem::create_directories(report_dir);
  const std::filesystem::path dir(report_dir);
  nlohmann::json rep = summary;
  rep["model"] = a.out;
  std::string why = render_plot(accuracy_plot(st, o.baseline), (dir / "fig5a_accuracy.gp").string(),
                                (dir / "fig5a_accuracy.svg").string());
  if (!why.empty()) log("warning: fig5a_accuracy.svg not rendered: " + why);
  why = render_plot(spread_plot(st), (dir / "fig5b_criticality_sd.gp").string(),
                    (dir / "fig5b_criticality_sd.svg").string());
  if (!why.empty()) log("warning: fig5b_criticality_sd.svg not rendered: " + why);
  rep["figures"] = {"fig5a_accuracy.svg", "fig5b_criticality_sd.svg"};
  save_model(out, a.out);
  write_json((dir / "features.json").string(), rep);
  // A run that stopped short of --until-accuracy keeps its checkpoint (the state after its last
  // fine-tuning), so that a run with more --iterations can continue it instead of starting over.
  const bool short_of_baseline = o.until_baseline && !reached;
  std::error_code ec;
  if (!short_of_baseline) std::filesystem::remove(a.checkpoint, ec);

  std::printf("%-9s %-14s %-14s %s\n", "iteration", "8-bit acc (%)", "float acc (%)",
              "mean SD of eta/mean(eta)");
  for (const auto& it : st.history)
    std::printf("%-9d %-14.2f %-14.2f %.4f\n", it.iteration, 100 * it.quantized_accuracy,
                100 * it.float_accuracy, it.mean_sd);
  std::printf(
      "float baseline %.2f%%: %s\n", 100 * o.baseline,
      reached ? "the final 8-bit accuracy is at least it" : "the final 8-bit accuracy is below it");
  if (short_of_baseline)
    log("warning: --until-accuracy float-baseline not reached in " + std::to_string(o.iterations) +
        " iterations; raise --iterations" +
        (std::filesystem::exists(a.checkpoint)
             ? " (with --resume and the same options it continues from " + a.checkpoint +
                   ", after the fine-tuning of iteration " + std::to_string(o.iterations - 1) + ")"
             : std::string()));
  std::printf("wrote %s and %s/features.json\n", a.out.c_str(), report_dir.c_str());
}
}  // namespace

/// Ranger: every site clamped, where it is read, to the range it takes on training images.
void run_ranges(const HardenArgs& a) {
  Model m = load_model(a.model);
  if (!m.quant)
    fail("--method ranges restricts the codes of a quantized model; '", a.model,
         "' is float: quantize it first (flipguard quantize)");
  if (a.data.empty()) fail("--method ranges needs --data: the training images give the ranges");
  const DataSpec spec = parse_data_spec(a.data);
  const Dataset train = load_dataset(spec, Split::Train).head(a.range_images);
  check_images(m.net, train.images, train.name);
  const Dataset test = load_dataset(spec, Split::Test).head(a.test_images);
  const double before = QuantizedNetwork(m.net, *m.quant).accuracy(test.images, test.labels);
  const QuantFormats restricted = restrict_ranges(m.net, *m.quant, train.images);
  const double after = QuantizedNetwork(m.net, restricted).accuracy(test.images, test.labels);
  nlohmann::json sites = nlohmann::json::array();
  for (int b : m.net.sites()) {
    const FixedPoint& was = m.quant->act[b];
    const FixedPoint& f = restricted.act[b];
    std::printf("site %d %-10s %s: codes clamped to [%lld, %lld] of [%lld, %lld] (%.1f%% of "
                "the word's range)\n",
                b, m.net.blocks[b].name.c_str(), f.str().c_str(), (long long)f.range_lo,
                (long long)f.range_hi, (long long)was.min_code(), (long long)was.max_code(),
                100.0 * (f.range_hi - f.range_lo + 1) / (was.max_code() - was.min_code() + 1));
    sites.push_back({{"site", b}, {"name", m.net.blocks[b].name}, {"range", {f.range_lo, f.range_hi}},
                     {"format", f.str()}});
  }
  std::printf("8-bit test accuracy %.2f%% before, %.2f%% with the ranges (%lld test images; "
              "ranges from %lld training images)\n",
              100 * before, 100 * after, (long long)test.size(), (long long)train.size());
  m.quant = restricted;
  m.meta["harden"] = {{"method", "ranges"}, {"command", command_line()}, {"from", a.model},
                      {"range_images", train.size()}, {"sites", sites},
                      {"accuracy_before", before}, {"accuracy_after", after},
                      {"test_images", test.size()}, {"previous", m.meta.value("harden", nlohmann::json())}};
  m.meta["quantized_test_accuracy"] = after;
  save_model(m, a.out);
  std::printf("wrote %s\n", a.out.c_str());
}

void add_harden(CLI::App& app, Action& action) {
  auto a = std::make_shared<HardenArgs>();
  a->features.finetune.epochs = 1;
  a->features.finetune.lr = 0.001;
  a->features.finetune.warmup_epochs = 0;
  auto* cmd = app.add_subcommand("harden", "optimize the bit-flip resilience of a model (section IV)");
  cmd->add_option("--model", a->model, "model file (float or quantized)")->required();
  cmd->add_option("--out", a->out, "model file to write")->required();
  cmd->add_option("--method", a->method,
                  "architecture: move global average pooling behind a bottleneck's 1x1 reader "
                  "(IV-A); features: Algorithm 1, eq. 6 and fine-tuning (IV-B); ranges: clamp "
                  "every site where it is read to its range on training data (Ranger)")
      ->check(CLI::IsMember({"architecture", "features", "ranges"}))
      ->capture_default_str();
  cmd->add_option("--data", a->data,
                  "data set NAME[:PATH]: test images check the float scores; training images "
                  "re-calibrate a quantized model (required for one) and fine-tune (features)")
      ->check(data_validator());
  cmd->add_option("--bottleneck-ratio", a->arch.bottleneck_ratio,
                  "architecture: a site is a bottleneck below this fraction of the median "
                  "site's neurons")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  cmd->add_option("--check-images", a->check_images,
                  "architecture: test images on which the float class scores are compared")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  FeatureOptions& f = a->features;
  cmd->add_option("--iterations", f.iterations,
                  "features: iterations T of Algorithm 1 (with --until-accuracy, the most tried)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--until-accuracy", a->until,
                  "features: float-baseline stops at the first iteration whose 8-bit accuracy "
                  "after the adjustment is at least the original float accuracy")
      ->check(CLI::IsMember({"float-baseline"}));
  cmd->add_option("--relevance-images", f.relevance_images,
                  "features: training images for the relevance (the set D of eq. 3)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--calibration-images", f.quant.calibration_images,
                  "features: training images that choose the formats after every adjustment")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag_callback(
      "--no-refine", [&f] { f.quant.refine = false; },
      "features: choose the formats after every adjustment without quantize's refinement (as "
      "quantize --no-refine; for large networks such as SqueezeNet, where it takes hours)");
  cmd->add_option("--finetune-epochs", f.finetune.epochs, "features: epochs of each fine-tuning")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--lr", f.finetune.lr,
                  "features: peak learning rate of each fine-tuning (SGD, Nesterov, cosine)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--batch-size", f.finetune.batch_size, "features: fine-tuning mini-batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--weight-decay", f.finetune.weight_decay, "features: fine-tuning L2 decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--finetune-target", a->finetune_target,
                  "features: what the fine-tuning learns: labels (cross-entropy, the paper's) or "
                  "teacher (distillation from the input model's float class scores, for "
                  "fine-tuning on few images such as an ImageNet sample)")
      ->check(CLI::IsMember({"labels", "teacher"}))
      ->capture_default_str();
  CLI::Option* temperature = cmd->add_option("--temperature", f.finetune.temperature,
                  "features: distillation temperature T (--finetune-target teacher)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--augment", a->augment, "features: fine-tuning augmentation, as for train")
      ->check(CLI::IsMember(augment_modes()))
      ->capture_default_str();
  cmd->add_option("--limit", a->limit,
                  "features: fine-tune (and take D and the calibration images) from the first N "
                  "training images only (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--test-images", a->test_images,
                  "features: measure the accuracies (and the baseline) on the first N test "
                  "images only (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", f.finetune.seed, "features: random seed of the fine-tuning")
      ->capture_default_str();
  cmd->add_option("--report", a->report_dir,
                  "features: directory for features.json and the Fig. 5 figures (default: "
                  "OUT without extension + .features)");
  cmd->add_option("--checkpoint", a->checkpoint,
                  "features: state after every fine-tuning (default: OUT.ckpt)");
  cmd->add_flag("--resume", a->resume, "features: continue from the checkpoint");
  cmd->add_option("--range-images", a->range_images,
                  "ranges: training images on which the range of every site is taken")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([&action, a, temperature] {
    const bool temperature_given = temperature->count() > 0;
    action = [a, temperature_given] {
      if (temperature_given && (a->method != "features" || a->finetune_target != "teacher"))
        fail("--temperature ", a->features.finetune.temperature,
             " is the distillation temperature: it needs --method features --finetune-target "
             "teacher (got --method ", a->method, ", --finetune-target ", a->finetune_target, ")");
      if (a->method == "features") run_features(*a);
      else if (a->method == "ranges") run_ranges(*a);
      else run_architecture(*a);
    };
  });
}

}  // namespace flipguard::cli
