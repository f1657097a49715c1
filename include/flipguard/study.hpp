#pragma once
/// \file
/// The study of section V-E from a reference model: the original, architecture- and
/// feature-optimized models and the range restriction as a baseline, each measured by an
/// exhaustive MSB campaign and bit error rate campaigns, then compared (results.json, the
/// figures of Fig. 3, 6 and 7, report.html). Every stage is one flipguard command (harden,
/// inject, import, quantize) recorded with its arguments, so that each number can be reproduced
/// on its own. The library plans the stages and summarizes their results; who runs a stage is
/// the caller's choice (StageRunner): the flipguard program runs each as a child process of
/// itself. Options and files: docs/harden.md.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace flipguard {

/// The benchmarks of a study: "mnist", "fashion-mnist", "cifar10" (from the reference model
/// `<arch>-<benchmark>-q8.fgm`), "imagenet-sample" (SqueezeNet 1.1 on the 1,000-image ILSVRC
/// sample, from its TorchScript module).
const std::vector<std::string>& study_benchmarks();

/// What a study takes, with its defaults. Everything but `command` and `log` is recorded in
/// study.json: a study continues only with the same options.
struct StudyOptions {
  std::string benchmark;          ///< one of study_benchmarks()
  std::string out;                ///< the study's directory (its finished stages are kept)
  std::string models = "models";  ///< folder of the reference models (<arch>-<benchmark>-q8.fgm)
  int64_t images = 0;             ///< test images of the exhaustive campaigns (0: all)
  int64_t ber_images = 1000;      ///< test images of the bit error rate campaigns
  int64_t runs = 100;             ///< runs per bit error rate (the paper: 1000)
  double bin_width = 0;           ///< histogram bin width in [0, 1] (0: auto_bin_width)
  // Algorithm 1 (feature optimization).
  int iterations = 5;                    ///< the most iterations
  std::string until = "float-baseline";  ///< stopping rule: float-baseline, or empty (every one)
  int finetune_epochs = 1;               ///< epochs per fine-tuning
  double lr = 0.001;                     ///< fine-tuning learning rate
  int64_t limit = 0;                     ///< first N training images only (0: all)
  int64_t relevance_images = 1000;       ///< images of D (eq. 3)
  int64_t calibration_images = 1000;     ///< images that choose the formats
  /// What the fine-tuning learns: labels, teacher (distillation from the starting model), or
  /// auto: teacher for imagenet-sample (a thousand images, one a class), labels otherwise.
  std::string finetune_target = "auto";
  int batch_size = 32;                   ///< imagenet-sample: the fine-tuning mini-batch
  int64_t test_images = 0;       ///< accuracies (and Algorithm 1's baseline) on the first N (0: all)
  int64_t range_images = 10000;  ///< training images that give the range restriction its ranges
  // imagenet-sample
  std::string torchscript;  ///< the pre-trained module (empty: squeezenet1_1.pt in data_dir())
  int top_features = 4;     ///< MSB campaigns on the K most critical feature maps by eq. 5 (V-E2)
  int positions = 48;       ///< neurons drawn in each of those maps

  std::string command;                          ///< the command recorded in results.json
  std::function<void(const std::string&)> log;  ///< progress and warnings (none when empty)
};

/// One stage of a study: a flipguard command and what it makes.
struct StudyStage {
  std::string name;               ///< "architecture", "features", "original msb campaign", ...
  std::vector<std::string> args;  ///< flipguard's arguments, the subcommand first
  std::string output;             ///< the model file or campaign directory it makes
  bool done = false;              ///< its result exists: the stage is kept, not run
  /// An interrupted run left a checkpoint: the stage continues from it (its command's --resume).
  bool resume = false;
  /// `flipguard ARGS` as recorded in results.json, each argument quoted for a POSIX shell where
  /// it needs it.
  std::string command() const;
};

/// The models and stages of a study, in order.
struct StudyPlan {
  /// The models by key: original, architecture (not for imagenet-sample: V-E1 found SqueezeNet's
  /// bottlenecks not critical), features, ranges (the range restriction of the optimizations'
  /// starting model), features_ranges (of the feature-optimized model).
  std::vector<std::string> models;
  std::string base;                          ///< the optimizations' starting model
  std::map<std::string, std::string> files;  ///< each model's file
  nlohmann::json options;                    ///< what study.json records
  std::vector<StudyStage> stages;            ///< in the order they run
  /// A model's title: "original", "architecture-optimized", "feature-optimized", ...
  std::string title(const std::string& model) const;
};

/// Plans the study of `o` without running or writing anything. Throws Error naming the parameter
/// and the value for an unknown benchmark or finetune_target, a missing reference model or
/// TorchScript module, or an `out` directory that holds a study with other options.
StudyPlan plan_study(const StudyOptions& o);

/// Runs one stage (its StudyStage::args, with resume when StudyStage::resume), returning when its
/// output is complete; throws to stop the study.
using StageRunner = std::function<void(const StudyStage&)>;

/// What a finished study gives.
struct StudyResult {
  StudyPlan plan;
  nlohmann::json results;  ///< results.json (the keys of docs/harden.md)
};

/// The study: plans it (plan_study), records its options in out/study.json, runs every stage
/// whose result does not exist through `run` in order, then reads the models and campaigns and
/// writes out/results.json, the figures and out/report.html (each file atomically).
StudyResult run_study(const StudyOptions& o, const StageRunner& run);

}  // namespace flipguard
