// flipguard harden: resilience optimization of the network itself (section IV).
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

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

void run_architecture(const HardenArgs& a) {
  const Model m = load_model(a.model);
  if (m.quant && a.data.empty())
    fail("'", a.model, "' is quantized: --data is needed to choose the formats of the "
         "changed sites (or harden the float model and quantize it afterwards)");
  Dataset train, test;
  if (!a.data.empty()) {
    const DataSpec spec = parse_data_spec(a.data);
    test = load_dataset(spec, Split::Test);
    if (m.quant) train = load_dataset(spec, Split::Train);
  }
  ArchitectureRunOptions o;
  o.arch = a.arch;
  o.check_images = a.check_images;
  o.from = a.model;
  o.command = command_line();
  o.progress = phase_lines();
  const ArchitectureRun run = harden_architecture(m, train, test, o);
  for (const Bottleneck& b : run.report.bottlenecks)
    std::printf("bottleneck: block %d '%s' %s (%lld neurons, median site %lld): %s\n", b.block,
                b.name.c_str(), b.shape.str().c_str(), (long long)b.shape.numel(),
                (long long)b.median_neurons, b.action.c_str());
  if (run.report.bottlenecks.empty())
    std::printf("no bottleneck site (ratio %g of the median site)\n", a.arch.bottleneck_ratio);
  const nlohmann::json& meta = run.model.meta;
  if (!a.data.empty()) {
    std::printf("float class scores on %lld test images: largest difference %.3g\n",
                (long long)run.checked_images, run.max_difference);
    if (run.requantized)
      std::printf("re-quantized (%d-bit, %s): test accuracy %.2f%%\n", run.requantized->bits,
                  run.requantized->is_signed ? "signed" : "unsigned",
                  100 * meta["quantized_test_accuracy"].get<double>());
    std::printf("float test accuracy %.2f%%\n", 100 * meta["float_test_accuracy"].get<double>());
  }
  save_model(run.model, a.out);
  std::printf("wrote %s (%s): %d pooling%s moved\n", a.out.c_str(), run.model.net.arch.c_str(),
              run.report.moved, run.report.moved == 1 ? "" : "s");
}

/// Algorithm 1 (IV-B) with checkpoints and the Fig. 5 report.
void run_features(const HardenArgs& a) {
  if (a.data.empty()) fail("--method features needs --data: it fine-tunes on the training images");
  const Model m = load_model(a.model);
  const DataSpec spec = parse_data_spec(a.data);
  FeatureRunOptions o;
  o.features = a.features;
  o.features.until_baseline = a.until == "float-baseline";
  o.features.progress = phase_lines();
  o.features.finetune.log_every = 0;  // the fine-tuning's progress is the line's
  o.augment = a.augment;
  o.distill = a.finetune_target == "teacher";
  o.train_images = a.limit;
  o.test_images = a.test_images;
  o.out = a.out;
  o.checkpoint = a.checkpoint;
  o.resume = a.resume;
  o.report_dir = a.report_dir;
  o.from = a.model;
  o.data = a.data;
  o.command = command_line();
  const FeatureRun run =
      harden_features(m, load_dataset(spec, Split::Train), load_dataset(spec, Split::Test), o, log);
  std::printf("%-9s %-14s %-14s %s\n", "iteration", "8-bit acc (%)", "float acc (%)",
              "mean SD of eta/mean(eta)");
  for (const auto& it : run.state.history)
    std::printf("%-9d %-14.2f %-14.2f %.4f\n", it.iteration, 100 * it.quantized_accuracy,
                100 * it.float_accuracy, it.mean_sd);
  std::printf("float baseline %.2f%%: %s\n", 100 * run.baseline,
              run.reached ? "the final 8-bit accuracy is at least it"
                          : "the final 8-bit accuracy is below it");
  const int iterations = a.features.iterations;
  if (run.short_of_baseline)
    log("warning: --until-accuracy float-baseline not reached in " + std::to_string(iterations) +
        " iterations; raise --iterations" +
        (std::filesystem::exists(run.checkpoint)
             ? " (with --resume and the same options it continues from " + run.checkpoint +
                   ", after the fine-tuning of iteration " + std::to_string(iterations - 1) + ")"
             : std::string()));
  std::printf("wrote %s and %s/features.json\n", a.out.c_str(), run.report_dir.c_str());
}

/// Ranger: every site clamped, where it is read, to the range it takes on training images.
void run_ranges(const HardenArgs& a) {
  const Model m = load_model(a.model);
  if (!m.quant)
    fail("--method ranges restricts the codes of a quantized model; '", a.model,
         "' is float: quantize it first (flipguard quantize)");
  if (a.data.empty()) fail("--method ranges needs --data: the training images give the ranges");
  const DataSpec spec = parse_data_spec(a.data);
  const Dataset train = load_dataset(spec, Split::Train).head(a.range_images);
  const Dataset test = load_dataset(spec, Split::Test).head(a.test_images);
  const RangesRun run = harden_ranges(m, train, test, a.model, command_line());
  for (int b : m.net.sites()) {
    const FixedPoint& was = m.quant->act[b];
    const FixedPoint& f = run.model.quant->act[b];
    std::printf(
        "site %d %-10s %s: codes clamped to [%lld, %lld] of [%lld, %lld] (%.1f%% of "
        "the word's range)\n",
        b, m.net.blocks[b].name.c_str(), f.str().c_str(), (long long)f.range_lo,
        (long long)f.range_hi, (long long)was.min_code(), (long long)was.max_code(),
        100.0 * (f.range_hi - f.range_lo + 1) / (was.max_code() - was.min_code() + 1));
  }
  std::printf(
      "8-bit test accuracy %.2f%% before, %.2f%% with the ranges (%lld test images; "
      "ranges from %lld training images)\n",
      100 * run.before, 100 * run.after, (long long)test.size(), (long long)train.size());
  save_model(run.model, a.out);
  std::printf("wrote %s\n", a.out.c_str());
}

}  // namespace

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
      ->check(in_range(1e-9, 1.0))
      ->capture_default_str();
  cmd->add_option("--check-images", a->check_images,
                  "architecture: test images on which the float class scores are compared")
      ->check(at_least(1))
      ->capture_default_str();
  FeatureOptions& f = a->features;
  cmd->add_option("--iterations", f.iterations,
                  "features: iterations T of Algorithm 1 (with --until-accuracy, the most tried)")
      ->check(in_range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--until-accuracy", a->until,
                  "features: float-baseline stops at the first iteration whose 8-bit accuracy "
                  "after the adjustment is at least the original float accuracy")
      ->check(CLI::IsMember({"float-baseline"}));
  cmd->add_option("--relevance-images", f.relevance_images,
                  "features: training images for the relevance (the set D of eq. 3)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--calibration-images", f.quant.calibration_images,
                  "features: training images that choose the formats after every adjustment")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_flag_callback(
      "--no-refine", [&f] { f.quant.refine = false; },
      "features: choose the formats after every adjustment without quantize's refinement (as "
      "quantize --no-refine; for large networks such as SqueezeNet, where it takes hours)");
  cmd->add_option("--finetune-epochs", f.finetune.epochs, "features: epochs of each fine-tuning")
      ->check(in_range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--lr", f.finetune.lr,
                  "features: peak learning rate of each fine-tuning (SGD, Nesterov, cosine)")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--batch-size", f.finetune.batch_size, "features: fine-tuning mini-batch")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--weight-decay", f.finetune.weight_decay, "features: fine-tuning L2 decay")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--finetune-target", a->finetune_target,
                  "features: what the fine-tuning learns: labels (cross-entropy, the paper's) or "
                  "teacher (distillation from the input model's float class scores, for "
                  "fine-tuning on few images such as an ImageNet sample)")
      ->check(CLI::IsMember({"labels", "teacher"}))
      ->capture_default_str();
  CLI::Option* temperature = cmd->add_option("--temperature", f.finetune.temperature,
                  "features: distillation temperature T (--finetune-target teacher)")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--augment", a->augment, "features: fine-tuning augmentation, as for train")
      ->check(CLI::IsMember(augment_modes()))
      ->capture_default_str();
  cmd->add_option("--limit", a->limit,
                  "features: fine-tune (and take D and the calibration images) from the first N "
                  "training images only (0: all)")
      ->check(at_least(0));
  cmd->add_option("--test-images", a->test_images,
                  "features: measure the accuracies (and the baseline) on the first N test "
                  "images only (0: all)")
      ->check(at_least(0));
  cmd->add_option("--seed", f.finetune.seed, "features: random seed of the fine-tuning")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--report", a->report_dir,
                  "features: directory for features.json and the Fig. 5 figures (default: "
                  "OUT without extension + .features)");
  cmd->add_option("--checkpoint", a->checkpoint,
                  "features: state after every fine-tuning (default: OUT.ckpt)");
  cmd->add_flag("--resume", a->resume, "features: continue from the checkpoint");
  cmd->add_option("--range-images", a->range_images,
                  "ranges: training images on which the range of every site is taken")
      ->check(at_least(1))
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
