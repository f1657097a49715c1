// flipguard train: trains a zoo architecture on a data set, seeded and resumable.
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/train.hpp>
#include <flipguard/zoo.hpp>

#include <chrono>
#include <cstdio>

namespace flipguard::cli {

namespace {
struct TrainArgs {
  std::string arch, data, out;
  int64_t limit = 0;
  std::string augment = "auto";
  bool no_batchnorm = false;
  std::string teacher;
  double temperature = 4;
  TrainOptions o;
};
}  // namespace

void add_train(CLI::App& app, Action& action) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "train a zoo architecture from scratch");
  cmd->add_option("--arch", a->arch, "architecture")->required()->check(CLI::IsMember(zoo_names()));
  cmd->add_option("--data", a->data, "data set NAME[:PATH]")->required()->check(data_validator());
  cmd->add_option("--out", a->out, "model file to write")->required();
  cmd->add_option("--epochs", a->o.epochs, "epochs")->capture_default_str();
  cmd->add_option("--batch-size", a->o.batch_size, "mini-batch size")->capture_default_str();
  cmd->add_option("--lr", a->o.lr, "peak learning rate (SGD, Nesterov momentum, cosine decay)")
      ->capture_default_str();
  cmd->add_option("--momentum", a->o.momentum, "momentum")->capture_default_str();
  cmd->add_option("--weight-decay", a->o.weight_decay, "L2 weight decay")->capture_default_str();
  cmd->add_option("--warmup", a->o.warmup_epochs, "epochs of linear learning-rate warm-up")
      ->capture_default_str();
  cmd->add_option("--augment", a->augment,
                  "on (4-pixel random crop + flip), shift (2-pixel random shift, no flip, for "
                  "digits), affine (the shift, then a rotation of up to 10 degrees and a scaling "
                  "by up to 10 % either way, for digits), off, or auto (on for cifar10, off "
                  "otherwise)")
      ->check(CLI::IsMember(augment_modes()))
      ->capture_default_str();
  cmd->add_flag("--no-batchnorm", a->no_batchnorm, "train without (folded) batch normalization");
  cmd->add_option("--seed", a->o.seed, "random seed")
      ->check(at_least(0))->capture_default_str();
  cmd->add_option("--checkpoint", a->o.checkpoint, "checkpoint file (default: OUT.ckpt)");
  cmd->add_flag("--resume", a->o.resume, "continue from the checkpoint");
  cmd->add_option("--init", a->o.init,
                  "warm restart: start from this training checkpoint's weights (an earlier "
                  "run's OUT.ckpt of the same architecture) with a fresh learning-rate schedule");
  cmd->add_option("--limit", a->limit, "train on the first N training images only (0: all)")
      ->check(at_least(0));
  cmd->add_option("--teacher", a->teacher,
                  "knowledge distillation: learn this model's class probabilities (its float "
                  "pass, softened by --temperature) instead of the labels; for example an "
                  "mnist-teacher model for mnist-cnn (models/README.md)");
  CLI::Option* temperature =
      cmd->add_option("--temperature", a->temperature, "distillation temperature T (--teacher)")
          ->check(positive())
          ->capture_default_str();
  cmd->callback([&action, a, temperature] {
    const bool temperature_given = temperature->count() > 0;
    action = [a, temperature_given] {
      if (temperature_given && a->teacher.empty())
        fail("--temperature ", a->temperature,
             " is the distillation temperature: it needs --teacher MODEL");
      const DataSpec spec = parse_data_spec(a->data);
      TrainOptions o = a->o;
      if (!a->teacher.empty()) {
        o.teacher = load_model(a->teacher).net;
        o.temperature = a->temperature;
      }
      set_augment(a->augment, spec.name, o);
      o.batchnorm = !a->no_batchnorm;
      if (o.checkpoint.empty()) o.checkpoint = a->out + ".ckpt";
      Dataset train = load_dataset(spec, Split::Train);
      if (a->limit > 0) train = train.head(a->limit);
      const Dataset test = load_dataset(spec, Split::Test);
      log("training " + a->arch + " on " + spec.name + ": " + std::to_string(train.size()) +
          " images, " + std::to_string(o.epochs) + " epochs");
      Network net = build_zoo(a->arch, o.seed);
      const auto t0 = std::chrono::steady_clock::now();
      // One live line for the whole run; each epoch's result is a line of its own above it.
      ProgressLine line("train", "batches");
      o.log_every = 0;
      o.progress = [&line](const TrainProgress& p) {
        char detail[128];
        std::snprintf(detail, sizeof detail, ", epoch %d/%d, loss %.4f, acc %.2f%%, lr %.4f",
                      p.epoch, p.epochs, p.loss, 100 * p.accuracy, p.lr);
        line.update(double(p.epoch - 1) * p.batches + p.batch, double(p.epochs) * p.batches, detail);
      };
      const EpochReport r = train_network(net, train, test, o, log);
      const double batches = double(o.epochs) * ((train.size() + o.batch_size - 1) / o.batch_size);
      line.finish(batches, batches);
      Model m{net, std::nullopt, {}};
      m.meta = {{"command", command_line()},
                {"data", spec.name},
                {"train_images", train.size()},
                {"epochs", o.epochs},
                {"seed", o.seed},
                {"teacher", a->teacher.empty() ? nlohmann::json() : nlohmann::json(a->teacher)},
                {"init", o.init.empty() ? nlohmann::json() : nlohmann::json(o.init)},
                {"float_test_accuracy", r.test_accuracy},
                {"train_seconds",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
      save_model(m, a->out);
      std::printf("wrote %s: float test accuracy %.2f%%\n", a->out.c_str(), 100 * r.test_accuracy);
    };
  });
}

}  // namespace flipguard::cli
