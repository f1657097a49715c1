// flipguard harden: resilience optimization of the network itself (section IV).
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>

namespace flipguard::cli {

namespace {
struct HardenArgs {
  std::string model, data, out, method = "architecture";
  ArchitectureOptions arch;
  int64_t check_images = 500;
};

/// Largest absolute difference of the float class scores of two networks on test images.
double max_score_difference(const Network& a, const Network& b, const Dataset& test) {
  torch::NoGradGuard no_grad;
  const auto x = a.preprocess(test.images);
  return (a.forward(x) - b.forward(x)).abs().max().item<double>();
}
}  // namespace

void add_harden(CLI::App& app, Action& action) {
  auto a = std::make_shared<HardenArgs>();
  auto* cmd = app.add_subcommand("harden", "optimize the bit-flip resilience of a model (section IV)");
  cmd->add_option("--model", a->model, "model file (float or quantized)")->required();
  cmd->add_option("--out", a->out, "model file to write")->required();
  cmd->add_option("--method", a->method, "architecture: move global average pooling behind a "
                                         "bottleneck's 1x1 reader (IV-A)")
      ->check(CLI::IsMember({"architecture"}))
      ->capture_default_str();
  cmd->add_option("--data", a->data,
                  "data set NAME[:PATH]: test images check the float scores; training images "
                  "re-calibrate a quantized model (required for one)")
      ->check(data_validator());
  cmd->add_option("--bottleneck-ratio", a->arch.bottleneck_ratio,
                  "a site is a bottleneck below this fraction of the median site's neurons")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  cmd->add_option("--check-images", a->check_images,
                  "test images on which the float class scores are compared")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([&action, a] {
    action = [a] {
      Model m = load_model(a->model);
      if (m.quant && a->data.empty())
        fail("'", a->model, "' is quantized: --data is needed to choose the formats of the "
             "changed sites (or harden the float model and quantize it afterwards)");
      ArchitectureReport report;
      const Network net = optimize_architecture(m.net, report, a->arch);
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
        std::printf("no bottleneck site (ratio %g of the median site)\n", a->arch.bottleneck_ratio);
      nlohmann::json meta = m.meta;
      meta["harden"] = {{"method", a->method}, {"command", command_line()}, {"from", a->model},
                        {"bottlenecks", found}, {"moved", report.moved}};
      Model out{net, std::nullopt, meta};
      if (!a->data.empty()) {
        const DataSpec spec = parse_data_spec(a->data);
        const Dataset test = load_dataset(spec, Split::Test);
        check_compatible(m.net, test);
        const double diff = max_score_difference(m.net, net, test.head(a->check_images));
        std::printf("float class scores on %lld test images: largest difference %.3g\n",
                    (long long)std::min<int64_t>(a->check_images, test.size()), diff);
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
      save_model(out, a->out);
      std::printf("wrote %s (%s): %d pooling%s moved\n", a->out.c_str(), net.arch.c_str(),
                  report.moved, report.moved == 1 ? "" : "s");
    };
  });
}

}  // namespace flipguard::cli
