// flipguard eval: test accuracy of a model; a quantized model is run in exact fixed point.
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <optional>
#include <iostream>

namespace flipguard::cli {

namespace {
struct EvalArgs {
  std::string model, data;
  bool json = false;
  int64_t images = 0;
  std::string predictions, scores;
};

/// Class scores (N x classes, float64) of every image, in batches: of the fixed-point pass when
/// `q` is given, as real values (the exact integer scores times their unit, score_scale()).
torch::Tensor class_scores(const Network& net, const QuantizedNetwork* q,
                           const torch::Tensor& images, int64_t batch = 100) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < images.size(0); s += batch) {
    const torch::Tensor x = images.slice(0, s, std::min(images.size(0), s + batch));
    parts.push_back(q ? q->scores(x) * q->score_scale()
                      : net.forward(net.preprocess(x)).flatten(1).to(torch::kFloat64));
  }
  return torch::cat(parts);
}
}  // namespace

void add_eval(CLI::App& app, Action& action) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "test accuracy of a model (fixed point if quantized)");
  cmd->add_option("--model", a->model, "model file")->required();
  cmd->add_option("--data", a->data, "data set NAME[:PATH]")->required()->check(data_validator());
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->add_option("--images", a->images, "the first N test images (0: all)")
      ->check(at_least(0));
  cmd->add_option("--predictions", a->predictions,
                  ".npy file to write the top-1 class of every test image to (int64; of the "
                  "fixed-point pass for a quantized model)");
  cmd->add_option("--scores", a->scores,
                  ".npy file to write the class scores of every test image to (float64, images x "
                  "classes, before softmax; of the fixed-point pass for a quantized model, as "
                  "real values)");
  cmd->callback([&action, a] {
    action = [a] {
      const Model m = load_model(a->model);
      const DataSpec spec = parse_data_spec(a->data);
      const Dataset test = load_dataset(spec, Split::Test).head(a->images);
      check_images(m.net, test.images, test.name);
      std::optional<QuantizedNetwork> q;
      if (m.quant) q.emplace(m.net, *m.quant);
      // With --predictions or --scores the scores are computed once (for a float model they are
      // its float pass), and the accuracy is theirs.
      torch::Tensor scores, best;
      if (!a->predictions.empty() || !a->scores.empty()) {
        scores = class_scores(m.net, q ? &*q : nullptr, test.images);
        best = scores.argmax(1).contiguous();
      }
      const auto accuracy_of_best = [&] {
        return best.eq(test.labels).sum().item<double>() / static_cast<double>(best.numel());
      };
      const double float_acc = best.defined() && !q
                                   ? accuracy_of_best()
                                   : float_accuracy(m.net, test.images, test.labels);
      nlohmann::json r = {{"model", a->model},        {"arch", m.net.arch},
                          {"data", spec.name},        {"images", test.size()},
                          {"quantized", m.quant.has_value()}, {"float_accuracy", float_acc}};
      const double acc = !q ? float_acc
                            : best.defined() ? accuracy_of_best()
                                             : q->accuracy(test.images, test.labels);
      if (q) {
        r["quantized_accuracy"] = acc;
        r["bits"] = m.quant->input.bits;
      }
      r["accuracy"] = acc;
      // Predictions and scores are written together: an interrupted eval leaves both or neither.
      std::vector<std::pair<std::string, std::string>> files;
      if (!a->predictions.empty()) {
        files.emplace_back(a->predictions,
                           npy_bytes(std::vector<int64_t>(best.data_ptr<int64_t>(),
                                                          best.data_ptr<int64_t>() + best.numel()),
                                     {best.numel()}));
        r["predictions"] = a->predictions;
      }
      if (!a->scores.empty()) {
        const torch::Tensor c = scores.contiguous();
        files.emplace_back(a->scores,
                           npy_bytes(std::vector<double>(c.data_ptr<double>(),
                                                         c.data_ptr<double>() + c.numel()),
                                     {c.size(0), c.size(1)}));
        r["scores"] = a->scores;
      }
      if (!files.empty()) write_files_atomic(files);
      if (a->json) {
        std::cout << r.dump(2) << "\n";
      } else if (m.quant) {
        std::printf("%s on %s (%lld test images): %.2f%% (%d-bit fixed point), float %.2f%%\n",
                    m.net.arch.c_str(), spec.name.c_str(), (long long)test.size(), 100 * acc,
                    m.quant->input.bits, 100 * float_acc);
      } else {
        std::printf("%s on %s (%lld test images): %.2f%% (float)\n", m.net.arch.c_str(),
                    spec.name.c_str(), (long long)test.size(), 100 * acc);
      }
    };
  });
}

}  // namespace flipguard::cli
