// flipguard quantize: picks fixed-point formats on calibration images (section V-B).
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>

#include <cstdio>

namespace flipguard::cli {

namespace {
struct QuantArgs {
  std::string model, data, out;
  bool is_unsigned = false, no_refine = false;
  QuantOptions o;
};
}  // namespace

void add_quantize(CLI::App& app, Action& action) {
  auto a = std::make_shared<QuantArgs>();
  auto* cmd = app.add_subcommand("quantize", "quantize a float model to dynamic fixed point");
  cmd->add_option("--model", a->model, "float model file")->required();
  cmd->add_option("--data", a->data, "data set NAME[:PATH] (training images calibrate)")
      ->required()
      ->check(data_validator());
  cmd->add_option("--out", a->out, "quantized model file to write")->required();
  cmd->add_option("--bits", a->o.bits, "word length of activations and weights")
      ->check(in_range(2, 16))
      ->capture_default_str();
  cmd->add_flag("--unsigned", a->is_unsigned, "store activation sites unsigned");
  cmd->add_flag("--no-refine", a->no_refine,
                "keep each tensor's own best format; skip moving formats by +-1 against the "
                "error of the class scores (two fixed-point passes per tensor)");
  cmd->add_option("--calibration-images", a->o.calibration_images,
                  "training images used to choose the formats")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->callback([&action, a] {
    action = [a] {
      Model m = load_model(a->model);
      const DataSpec spec = parse_data_spec(a->data);
      QuantOptions o = a->o;
      o.is_signed = !a->is_unsigned;
      o.refine = !a->no_refine;
      o.progress = phase_lines();
      const Dataset calib = load_dataset(spec, Split::Train).head(o.calibration_images);
      check_images(m.net, calib.images, calib.name);
      m.quant = calibrate(m.net, calib.images, o);
      const Dataset test = load_dataset(spec, Split::Test);
      const double qacc = QuantizedNetwork(m.net, *m.quant).accuracy(test.images, test.labels);
      const double facc = float_accuracy(m.net, test.images, test.labels);
      m.meta["quantize_command"] = command_line();
      m.meta["quantized_test_accuracy"] = qacc;
      m.meta["float_test_accuracy"] = facc;
      save_model(m, a->out);
      std::printf("input %s\n", m.quant->input.str().c_str());
      for (size_t b = 0; b < m.net.blocks.size(); ++b)
        std::printf("block %zu %-8s act %s%s\n", b, m.net.blocks[b].name.c_str(),
                    b + 1 < m.net.blocks.size() ? m.quant->act[b].str().c_str() : "(scores)",
                    m.net.blocks[b].weighted()
                        ? (" weight " + m.quant->weight[b].str()).c_str()
                        : "");
      std::printf("wrote %s: %d-bit test accuracy %.2f%%, float %.2f%%\n", a->out.c_str(), o.bits,
                  100 * qacc, 100 * facc);
    };
  });
}

}  // namespace flipguard::cli
