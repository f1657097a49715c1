// The study's plan: its options as study.json records them, and the flipguard command of every
// stage with the output that shows it done.
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/report.hpp>
#include <flipguard/study.hpp>


#include <algorithm>
#include <filesystem>

namespace flipguard {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string quote(const std::string& s) {
  if (s.find_first_of(" \t\"'\\$") == std::string::npos) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

void check_member(const char* name, const std::string& value,
                  const std::vector<std::string>& known) {
  if (std::find(known.begin(), known.end(), value) == known.end())
    fail("study: ", name, " '", value, "': expected one of ", join(known));
}

/// What study.json records of `o`: the options that shape the results. Options added after the
/// first studies are recorded only when they differ from the value those studies used, so that
/// the studies continue.
json recorded_options(const StudyOptions& o, const std::string& reference,
                      const std::string& torchscript, const std::string& target) {
  json options = {{"benchmark", o.benchmark}, {"reference_model", reference},
                  {"images", o.images}, {"ber_images", o.ber_images}, {"runs", o.runs},
                  {"bin_width", o.bin_width}, {"iterations", o.iterations},
                  {"until_accuracy", o.until}, {"finetune_epochs", o.finetune_epochs},
                  {"lr", o.lr}, {"limit", o.limit}, {"relevance_images", o.relevance_images},
                  {"calibration_images", o.calibration_images}, {"test_images", o.test_images}};
  if (o.range_images != 10000) options["range_images"] = o.range_images;
  if (o.benchmark == "imagenet-sample") {
    options["torchscript"] = torchscript;
    options["top_features"] = o.top_features;
    options["positions"] = o.positions;
    options["batch_size"] = o.batch_size;
  }
  if (target != "labels") options["finetune_target"] = target;
  return options;
}

}  // namespace

const std::vector<std::string>& study_benchmarks() {
  static const std::vector<std::string> names{"mnist", "fashion-mnist", "cifar10",
                                              "imagenet-sample"};
  return names;
}

std::string StudyStage::command() const {
  std::string s = "flipguard";
  for (const auto& a : args) s += " " + quote(a);
  return s;
}

std::string StudyPlan::title(const std::string& model) const {
  if (model == "ranges") return title(base) + " + ranges";
  static const std::map<std::string, std::string> titles{
      {"original", "original"},
      {"architecture", "architecture-optimized"},
      {"features", "feature-optimized"},
      {"features_ranges", "feature-optimized + ranges"}};
  return titles.at(model);
}

StudyPlan plan_study(const StudyOptions& o) {
  check_member("benchmark", o.benchmark, study_benchmarks());
  check_member("finetune_target", o.finetune_target, {"auto", "labels", "teacher"});
  check_member("until", o.until, {"", "float-baseline"});
  if (!(o.bin_width >= 0 && o.bin_width <= 1))
    fail("study: bin_width ", o.bin_width, ": expected 0 (automatic) or a width in (0, 1]");
  const bool ilsvrc = o.benchmark == "imagenet-sample";
  const std::string data = ilsvrc ? "imagenet" : o.benchmark;
  const std::string arch = o.benchmark == "cifar10" ? "cifar-cnn" : "mnist-cnn";
  const fs::path dir(o.out);
  const std::string torchscript =
      o.torchscript.empty() ? (fs::path(data_dir()) / "squeezenet1_1.pt").string() : o.torchscript;
  // ILSVRC starts from the pre-trained TorchScript module, imported and quantized here.
  const fs::path ref = ilsvrc ? dir / "original.fgm"
                              : fs::path(o.models) / (arch + "-" + o.benchmark + "-q8.fgm");
  if (ilsvrc && !fs::exists(torchscript))
    fail("study: torchscript '", torchscript, "': the pre-trained module is missing (`./run ",
         "setup` copies ../shared/data/squeezenet1_1.pt into the data folder)");
  if (!ilsvrc && !fs::exists(ref))
    fail("study: the reference model ", ref.string(), " is missing from models '", o.models,
         "': expected the folder of the reference models (models/README.md says how each is made)");
  const std::string target =
      o.finetune_target != "auto" ? o.finetune_target : ilsvrc ? "teacher" : "labels";

  StudyPlan p;
  p.options = recorded_options(o, ref.string(), torchscript, target);
  // Kept stages must come from the same study.
  if (fs::exists(dir / "study.json")) {
    const json before = read_json((dir / "study.json").string(), "study file");
    if (before != p.options)
      fail("study: out '", o.out, "' holds a study with other options (", before.dump(),
           "); this one is ", p.options.dump(),
           ": expected the same options to continue it, or another out directory");
  }
  p.models = ilsvrc ? std::vector<std::string>{"original", "features", "ranges", "features_ranges"}
                    : std::vector<std::string>{"original", "architecture", "features", "ranges",
                                               "features_ranges"};
  p.base = ilsvrc ? "original" : "architecture";
  p.files["original"] = ref.string();
  for (const auto& s : p.models)
    if (s != "original") p.files[s] = (dir / (s + ".fgm")).string();
  auto add = [&](const std::string& name, std::vector<std::string> args, const std::string& output,
                 bool done, bool resume) {
    p.stages.push_back({name, std::move(args), output, done, resume});
  };
  auto model_stage = [&](const std::string& name, std::vector<std::string> args,
                         const std::string& file) {
    add(name, std::move(args), file, fs::exists(file), fs::exists(file + ".ckpt"));
  };
  if (ilsvrc) {
    // Import (the class scores checked against LibTorch's run of the module), then 8 bits without
    // quantize's refinement, which takes hours on SqueezeNet's 59 tensors.
    const std::string imported = (dir / "float.fgm").string();
    add("import", {"import", "--torchscript", torchscript, "--input", "3x224x224", "--out", imported},
        imported, fs::exists(imported), false);
    add("quantize", {"quantize", "--model", imported, "--data", data, "--out", ref.string(),
                     "--calibration-images", std::to_string(o.calibration_images), "--no-refine"},
        ref.string(), fs::exists(ref), false);
  } else {
    // Architectural optimization (IV-A).
    const std::string& out = p.files["architecture"];
    add("architecture", {"harden", "--method", "architecture", "--model", ref.string(), "--data",
                         data, "--out", out},
        out, fs::exists(out), false);
  }
  // Algorithm 1 (IV-B) on the optimizations' starting model.
  std::vector<std::string> f{"harden", "--method", "features", "--model", p.files[p.base],
                             "--data", data, "--out", p.files["features"], "--report",
                             (dir / "features").string(), "--iterations",
                             std::to_string(o.iterations), "--finetune-epochs",
                             std::to_string(o.finetune_epochs), "--lr", format_number(o.lr),
                             "--limit", std::to_string(o.limit), "--relevance-images",
                             std::to_string(o.relevance_images), "--calibration-images",
                             std::to_string(o.calibration_images), "--test-images",
                             std::to_string(o.test_images)};
  if (!o.until.empty()) f.insert(f.end(), {"--until-accuracy", o.until});
  if (target != "labels") f.insert(f.end(), {"--finetune-target", target});
  // The sample is both the fine-tuning and the test set: augmented, in small batches of 224x224.
  if (ilsvrc)
    f.insert(f.end(), {"--no-refine", "--augment", "on", "--batch-size", std::to_string(o.batch_size)});
  model_stage("features", f, p.files["features"]);
  // The baseline: every site clamped where it is read to its range on training images.
  for (const auto& [out, from] : {std::pair<std::string, std::string>{"ranges", p.base},
                                  {"features_ranges", "features"}})
    add(out, {"harden", "--method", "ranges", "--model", p.files[from], "--data", data, "--out",
              p.files[out], "--range-images", std::to_string(o.range_images), "--test-images",
              std::to_string(o.test_images)},
        p.files[out], fs::exists(p.files[out]), false);
  // The campaigns of every model.
  for (const auto& s : p.models) {
    for (const std::string kind : {"msb", "ber"}) {
      const fs::path cdir = dir / "campaigns" / (s + "-" + kind);
      std::vector<std::string> c{"inject", "--model", p.files[s], "--data", data, "--out", cdir.string()};
      if (kind == "msb") {
        c.insert(c.end(), {"--images", std::to_string(o.images), "--bin-width", format_number(o.bin_width)});
        // V-E2: 48 positions in each of the four most critical feature maps by eq. 5.
        if (ilsvrc)
          c.insert(c.end(), {"--top-features", std::to_string(o.top_features), "--positions",
                             std::to_string(o.positions), "--relevance-images",
                             std::to_string(o.relevance_images)});
      } else {
        c.insert(c.end(), {"--campaign", "ber", "--images", std::to_string(o.ber_images), "--runs",
                           std::to_string(o.runs)});
      }
      add(s + " " + kind + " campaign", c, cdir.string(), fs::exists(cdir / "summary.json"),
          fs::exists(cdir / "checkpoint.json"));
    }
  }
  return p;
}

}  // namespace flipguard
