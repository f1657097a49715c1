// flipguard import: a TorchScript module (traced or scripted) to a flipguard model.
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/torchscript.hpp>

#include <cstdio>
#include <sstream>

namespace flipguard::cli {

namespace {

struct ImportArgs {
  std::string torchscript, input, out, arch;
  std::vector<double> mean, std;
  int check_inputs = 8;
  double tolerance = 1e-4;
};

/// "3x224x224" -> Shape.
Shape parse_shape(const std::string& text) {
  Shape s;
  char x1 = 0, x2 = 0;
  std::istringstream in(text);
  if (!(in >> s.c >> x1 >> s.h >> x2 >> s.w) || x1 != 'x' || x2 != 'x' || !in.eof() ||
      s.numel() <= 0 || s.c <= 0 || s.h <= 0 || s.w <= 0)
    fail("invalid --input '", text, "': expected CxHxW with positive sizes, e.g. 3x224x224");
  return s;
}

/// --mean/--std: given, or ImageNet's for 3 channels, or none (0 and 1) otherwise.
std::vector<double> per_channel(const std::vector<double>& given, const Shape& in,
                                const std::vector<double>& imagenet, double plain,
                                const char* option) {
  if (!given.empty()) {
    if (static_cast<int64_t>(given.size()) != in.c)
      fail(option, " has ", given.size(), " values; the input has ", in.c, " channels");
    return given;
  }
  if (in.c == 3) return imagenet;
  return std::vector<double>(in.c, plain);
}

}  // namespace

void add_import(CLI::App& app, Action& action) {
  auto a = std::make_shared<ImportArgs>();
  auto* cmd = app.add_subcommand("import", "convert a TorchScript module into a flipguard model");
  cmd->add_option("--torchscript", a->torchscript, "module file written by torch.jit.save")
      ->required();
  cmd->add_option("--input", a->input, "shape of one input image, CxHxW (e.g. 3x224x224)")
      ->required();
  cmd->add_option("--out", a->out, "model file to write")->required();
  cmd->add_option("--arch", a->arch, "name of the network (default: the file's stem)");
  cmd->add_option("--mean", a->mean,
                  "per-channel mean of the pre-processing, on pixels scaled to [0, 1] "
                  "(default: ImageNet's 0.485,0.456,0.406 for 3 channels, else 0)")
      ->delimiter(',');
  cmd->add_option("--std", a->std,
                  "per-channel standard deviation (default: ImageNet's 0.229,0.224,0.225 for 3 "
                  "channels, else 1)")
      ->delimiter(',');
  cmd->add_option("--check-inputs", a->check_inputs,
                  "random inputs on which the imported model must give the module's class scores")
      ->check(in_range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--tolerance", a->tolerance,
                  "largest accepted difference of the class scores, relative to the largest score")
      ->check(positive())
      ->capture_default_str();
  cmd->callback([&action, a] {
    action = [a] {
      ImportOptions o;
      o.input = parse_shape(a->input);
      o.mean = per_channel(a->mean, o.input, imagenet_mean(), 0.0, "--mean");
      o.std = per_channel(a->std, o.input, imagenet_std(), 1.0, "--std");
      o.arch = a->arch;
      Model m = import_torchscript(a->torchscript, o);
      const ImportCheck check = compare_with_torchscript(m, a->torchscript, a->check_inputs, 1);
      const double relative = check.max_abs_diff / std::max(check.max_abs_score, 1e-30);
      const std::vector<Shape> shapes = m.net.shapes();
      for (size_t b = 0; b < m.net.blocks.size(); ++b) {
        const Block& blk = m.net.blocks[b];
        std::string extra;
        if (blk.relu) extra += " +relu";
        if (blk.post.kind == PoolKind::Max) extra += " +maxpool";
        if (blk.post.kind == PoolKind::Avg) extra += " +avgpool";
        if (blk.post.kind == PoolKind::GlobalAvg) extra += " +global-avgpool";
        const nlohmann::json& meta = m.meta["torchscript"]["blocks"];
        if (meta.contains(blk.name) && meta[blk.name].contains("batch_norm"))
          extra += " (batch norm folded)";
        std::printf("block %zu %-24s -> %-12s%s%s\n", b, blk.name.c_str(),
                    shapes[b].str().c_str(), extra.c_str(),
                    b + 1 < m.net.blocks.size() ? "" : " (class scores)");
      }
      std::printf("checked on %d random inputs: largest class-score difference %.3g (%.3g of the "
                  "largest score)\n",
                  a->check_inputs, check.max_abs_diff, relative);
      if (!(relative <= a->tolerance))
        fail("the imported model's class scores differ from the module's by ", relative,
             " of the largest score; expected at most --tolerance ", a->tolerance);
      m.meta["import_command"] = command_line();
      m.meta["import_check"] = {{"inputs", a->check_inputs},
                                {"max_abs_diff", check.max_abs_diff},
                                {"max_abs_score", check.max_abs_score}};
      save_model(m, a->out);
      std::printf("wrote %s: %s, %zu blocks, %zu activation sites, %lld classes\n",
                  a->out.c_str(), m.net.arch.c_str(), m.net.blocks.size(), m.net.sites().size(),
                  static_cast<long long>(m.net.num_classes()));
    };
  });
}

void add_export(CLI::App& app, Action& action) {
  auto model = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "export", "write an imported (hardened) model's weights as a PyTorch state dict");
  cmd->add_option("--model", *model, "model imported with flipguard import")->required();
  cmd->add_option("--state-dict", *out, "file to write (torch.load + load_state_dict)")
      ->required();
  cmd->callback([&action, model, out] {
    action = [model, out] {
      const Model m = load_model(*model);
      export_state_dict(m, *out);
      std::printf("wrote %s: %zu tensors under the names of %s\n", out->c_str(),
                  state_dict(m).size(),
                  m.meta["torchscript"].value("file", std::string("the module")).c_str());
    };
  });
}

}  // namespace flipguard::cli
