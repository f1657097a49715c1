// flipguard reproduce: the study of section V-E from a reference model (flipguard/study.hpp).
// Every stage is one flipguard command, run here as a child process of this program, so that each
// number can be reproduced on its own; a stage whose result exists is kept, an interrupted
// campaign or feature optimization continues from its checkpoint.
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/report.hpp>
#include <flipguard/study.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

namespace flipguard::cli {

namespace {

/// Runs `flipguard ARGS` of a stage as a child process of this program (with this process's
/// thread count, and --resume when the stage continues); throws Error when it fails. A child
/// process rather than a call: each stage starts from a clean process, exactly as its recorded
/// command would, and an interrupted study loses at most the stage that ran.
void run_stage(const StudyStage& stage) {
  std::vector<std::string> args = stage.args;
  if (stage.resume) args.push_back("--resume");
  args.insert(args.begin(), {"--threads", std::to_string(torch::get_num_threads())});
  const std::string line = StudyStage{stage.name, args, "", false, false}.command();
  log("reproduce: " + stage.name + ": " + line);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<char*> argv{const_cast<char*>(self.c_str())};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) fail("reproduce: cannot start the ", stage.name, " stage");
  if (pid == 0) {
    execv(self.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("reproduce: the ", stage.name, " stage failed (",
         WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                           : std::string("killed by a signal"),
         "): ", line, "; run `flipguard reproduce` again with the same options to continue");
}

void run_reproduce(StudyOptions o) {
  o.command = command_line();
  o.log = [](const std::string& line) { log("reproduce: " + line); };
  const StudyResult study = run_study(o, run_stage);
  const StudyPlan& p = study.plan;
  const nlohmann::json& r = study.results;
  std::printf("%-32s %-10s %-10s %-10s %s\n", "model", "8-bit acc", "worst", "mean", "file");
  for (const auto& s : p.models)
    std::printf("%-32s %-10s %-10s %-10s %s\n", p.title(s).c_str(),
                percent(r["models"][s]["quantized_accuracy"]).c_str(),
                percent(r["exhaustive"][s]["worst_case"]).c_str(),
                percent(r["exhaustive"][s]["mean"]).c_str(), p.files.at(s).c_str());
  const std::string architecture =
      r.contains("architecture_optimization")
          ? "architecture " + percent(r["architecture_optimization"]["worst_case_reduction"]) + ", "
          : "";
  std::printf("worst-case reduction: %sfeatures %s, ranges %s, features + ranges %s; mean BER "
              "reduction (optimized vs original) %s\n",
              architecture.c_str(), percent(r["feature_optimization"]["worst_case_reduction"]).c_str(),
              percent(r["range_restriction"]["worst_case_reduction"]).c_str(),
              percent(r["features_and_ranges"]["worst_case_reduction"]).c_str(),
              percent(r["ber"]["mean_relative_reduction"]["features_vs_original"]).c_str());
  std::printf("wrote %s/results.json and %s/report.html\n", o.out.c_str(), o.out.c_str());
}

}  // namespace

void add_reproduce(CLI::App& app, Action& action) {
  auto a = std::make_shared<StudyOptions>();
  auto* cmd = app.add_subcommand(
      "reproduce", "the paper's study (V-E): original, architecture- and feature-optimized "
                   "models, exhaustive MSB and bit error rate campaigns, results.json, report.html");
  cmd->add_option("--benchmark", a->benchmark,
                  "mnist, fashion-mnist, cifar10, or imagenet-sample (SqueezeNet 1.1 on the "
                  "1,000-image ILSVRC sample, from its TorchScript module)")
      ->required()
      ->check(CLI::IsMember(study_benchmarks()));
  cmd->add_option("--out", a->out, "directory of the study (kept stages are reused)")->required();
  cmd->add_option("--models", a->models,
                  "folder of the reference models (<arch>-<benchmark>-q8.fgm)")
      ->capture_default_str();
  cmd->add_option("--images", a->images, "test images of the exhaustive campaigns (0: all)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--ber-images", a->ber_images, "test images of the bit error rate campaigns")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--runs", a->runs, "runs per bit error rate (the paper: 1000)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--bin-width", a->bin_width, "histogram bin width (0: automatic)")
      ->check(in_range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--iterations", a->iterations, "Algorithm 1: the most iterations")
      ->check(in_range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--until-accuracy", a->until,
                  "Algorithm 1's stopping rule (float-baseline; empty: run every iteration)")
      ->check(CLI::IsMember({"", "float-baseline"}))
      ->capture_default_str();
  cmd->add_option("--finetune-epochs", a->finetune_epochs, "Algorithm 1: epochs per fine-tuning")
      ->check(in_range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--finetune-target", a->finetune_target,
                  "Algorithm 1: what the fine-tuning learns: labels, teacher (distillation from "
                  "the starting model), or auto (teacher for imagenet-sample, labels otherwise)")
      ->check(CLI::IsMember({"auto", "labels", "teacher"}))
      ->capture_default_str();
  cmd->add_option("--lr", a->lr, "Algorithm 1: fine-tuning learning rate")
      ->check(positive())
      ->capture_default_str();
  cmd->add_option("--limit", a->limit, "Algorithm 1: first N training images only (0: all)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--relevance-images", a->relevance_images, "Algorithm 1: images of D (eq. 3)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--calibration-images", a->calibration_images,
                  "Algorithm 1: images that choose the formats")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--test-images", a->test_images,
                  "accuracies (and Algorithm 1's baseline) on the first N test images (0: all)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--range-images", a->range_images,
                  "training images on which the range restriction takes every site's range")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--torchscript", a->torchscript,
                  "imagenet-sample: the pre-trained module (default: squeezenet1_1.pt in "
                  "$FLIPGUARD_DATA_DIR, where ./run setup copies it)");
  cmd->add_option("--top-features", a->top_features,
                  "imagenet-sample: MSB campaigns on the K most critical feature maps (eq. 5)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--positions", a->positions,
                  "imagenet-sample: neurons drawn in each of those maps")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "imagenet-sample: Algorithm 1's fine-tuning mini-batch")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->callback([&action, a] { action = [a] { run_reproduce(*a); }; });
}

}  // namespace flipguard::cli
