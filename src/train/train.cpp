#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/report.hpp>
#include <flipguard/train.hpp>

#include "../util/torch_child.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

namespace flipguard {

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kBnEps = 1e-5;
constexpr double kBnMomentum = 0.1;

/// Batch normalization state of one convolution block while training.
struct Norm {
  torch::Tensor gamma, beta, mean, var;
};

struct Trainer {
  Network& net;
  std::vector<Norm> norms;  // one per block; undefined tensors where the block has none
  const std::optional<QuantFormats>& quantized;

  Trainer(Network& n, bool batchnorm, const std::optional<QuantFormats>& q)
      : net(n), norms(n.blocks.size()), quantized(q) {
    // Convolutions that an addition reads are normalized too, as in a residual network's branch
    // and projection shortcut.
    std::vector<bool> added(net.blocks.size(), false);
    for (const Block& b : net.blocks)
      if (b.op == Op::Add)
        for (int j : b.inputs)
          if (j != Block::kNetworkInput) added[j] = true;
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      Block& b = net.blocks[i];
      if (b.weighted()) {
        b.weight = b.weight.detach().clone().set_requires_grad(true);
        b.bias = b.bias.detach().clone().set_requires_grad(true);
      }
      if (batchnorm && b.op == Op::Conv && (b.activated() || added[i])) {
        const int64_t k = b.out_channels;
        norms[i] = {torch::ones({k}).set_requires_grad(true), torch::zeros({k}).set_requires_grad(true),
                    torch::zeros({k}), torch::ones({k})};
      }
    }
  }

  std::vector<torch::Tensor> trainable() const {
    std::vector<torch::Tensor> p = net.parameters();
    for (const Norm& n : norms)
      if (n.gamma.defined()) {
        p.push_back(n.gamma);
        p.push_back(n.beta);
      }
    return p;
  }

  torch::Tensor forward(const torch::Tensor& x, bool training) {
    if (quantized) return quantized_training_forward(net, *quantized, x);
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      const Block& b = net.blocks[i];
      std::vector<torch::Tensor> in;
      for (int j : b.inputs) in.push_back(j == Block::kNetworkInput ? x : out[j]);
      if (!norms[i].gamma.defined()) {
        out.push_back(net.forward_block(static_cast<int>(i), in));
        continue;
      }
      const Norm& n = norms[i];
      auto y = torch::conv2d(in[0], b.weight, b.bias, {b.stride, b.stride},
                             {b.padding, b.padding}, {b.dilation, b.dilation}, b.groups);
      y = torch::batch_norm(y, n.gamma, n.beta, n.mean, n.var, training, kBnMomentum, kBnEps,
                            /*cudnn_enabled=*/false);
      out.push_back(apply_pool(activate(b, y), b.post));
    }
    return out.back().flatten(1);
  }

  /// The network with every normalization folded into its convolution.
  Network folded() const {
    torch::NoGradGuard no_grad;
    Network f = net.clone();
    for (size_t i = 0; i < f.blocks.size(); ++i) {
      const Norm& n = norms[i];
      if (!n.gamma.defined()) continue;
      Block& b = f.blocks[i];
      auto scale = n.gamma / torch::sqrt(n.var + kBnEps);
      b.weight = b.weight * scale.view({-1, 1, 1, 1});
      b.bias = (b.bias - n.mean) * scale + n.beta;
    }
    return f;
  }

  std::vector<std::pair<std::string, torch::Tensor>> state() const {
    std::vector<std::pair<std::string, torch::Tensor>> s;
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      const Block& b = net.blocks[i];
      const std::string p = "block" + std::to_string(i) + ".";
      if (b.weighted()) {
        s.emplace_back(p + "weight", b.weight);
        s.emplace_back(p + "bias", b.bias);
      }
      if (norms[i].gamma.defined()) {
        s.emplace_back(p + "bn.gamma", norms[i].gamma);
        s.emplace_back(p + "bn.beta", norms[i].beta);
        s.emplace_back(p + "bn.mean", norms[i].mean);
        s.emplace_back(p + "bn.var", norms[i].var);
      }
    }
    return s;
  }
};

std::string run_signature(const Network& net, const TrainOptions& o) {
  std::ostringstream s;
  s << net.arch << " epochs=" << o.epochs << " batch=" << o.batch_size << " lr=" << o.lr
    << " momentum=" << o.momentum << " wd=" << o.weight_decay << " warmup=" << o.warmup_epochs
    << " augment=" << o.augment << " pad=" << o.augment_pad << " flip=" << o.augment_flip;
  // Written only when set, so that checkpoints of runs without them still resume.
  if (o.rotates())
    s << " degrees=" << o.augment_degrees << " scale=" << o.augment_scale;
  s << " batchnorm=" << o.batchnorm << " seed=" << o.seed;
  if (o.quantized) {
    s << " quantized=" << o.quantized->input.str();
    for (size_t i = 0; i < o.quantized->act.size(); ++i)
      s << "," << o.quantized->act[i].str() << "/" << o.quantized->weight[i].str();
  }
  if (o.teacher) s << " teacher=" << o.teacher->arch << " temperature=" << o.temperature;
  if (!o.init.empty()) s << " init=" << std::filesystem::path(o.init).filename().string();
  return s.str();
}

void save_checkpoint(const std::string& path, const Trainer& t, torch::optim::SGD& opt, int epoch,
                     const std::string& signature) {
  torch::serialize::OutputArchive a;
  for (const auto& [name, tensor] : t.state()) a.write(name, tensor.detach());
  a.write("epoch", torch::tensor(static_cast<int64_t>(epoch)));
  a.write("signature", c10::IValue(signature));
  torch::serialize::OutputArchive o;
  opt.save(o);
  a.write("optimizer", o);
  std::ostringstream bytes;
  a.save_to(bytes);
  write_file_atomic(path, bytes.str());
}

/// Reads the training checkpoint at `path` with `read`, which opens it and reads what the run
/// needs; `what` says why ("resume", "init"). The archive is LibTorch's (torch::serialize: a
/// TorchScript module inside), whose reader is not safe on damaged files, so `read` runs in a
/// child process first (src/util/torch_child.hpp), then here. Whatever LibTorch throws is an
/// Error naming the file.
template <typename Read>
auto read_checkpoint(const std::string& path, const std::string& what, const Read& read) {
  if (!std::filesystem::is_regular_file(path))
    fail("cannot ", what, ": checkpoint '", path, "' does not exist or is not a file");
  const std::string why = read_in_child(path, [&] { read(); });
  if (!why.empty())
    fail("cannot ", what, ": '", path, "' is not a readable training checkpoint: ", why);
  try {
    return read();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("cannot ", what, ": '", path, "' is not a readable training checkpoint: ",
         torch_message(e));
  }
}

/// Copies the checkpoint's weights and normalization into `t`, each checked for its shape.
void read_state(torch::serialize::InputArchive& a, const std::string& path, Trainer& t) {
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : t.state()) {
    torch::Tensor v;
    if (!a.try_read(name, v))
      fail("training checkpoint '", path, "' has no tensor '", name, "' of ", t.net.arch,
           ": it was written for another architecture or with other normalization");
    if (v.sizes() != tensor.sizes())
      fail("training checkpoint '", path, "': tensor '", name, "' has shape ", v.sizes(), ", ",
           t.net.arch, " expects ", tensor.sizes());
    tensor.copy_(v);
  }
}

/// A warm restart: only the weights and normalization of `path` (TrainOptions::init).
void init_from_checkpoint(const std::string& path, Trainer& t) {
  read_checkpoint(path, "init", [&] {
    torch::serialize::InputArchive a;
    a.load_from(path);
    c10::IValue sig;
    const std::string arch = a.try_read("signature", sig) && sig.isString()
                                 ? sig.toStringRef().substr(0, sig.toStringRef().find(' '))
                                 : "";
    if (arch != t.net.arch)
      fail("cannot init ", t.net.arch, " from '", path, "': it is a checkpoint of ",
           arch.empty() ? "an unknown architecture" : arch);
    read_state(a, path, t);
  });
}

/// Continues the run of `signature` (TrainOptions::resume): weights, normalization and the
/// optimizer's state; returns the epochs done, 0 to `epochs`.
int load_checkpoint(const std::string& path, Trainer& t, torch::optim::SGD& opt,
                    const std::string& signature, int epochs) {
  return read_checkpoint(path, "resume", [&] {
    torch::serialize::InputArchive a;
    a.load_from(path);
    c10::IValue sig;
    if (!a.try_read("signature", sig) || !sig.isString() || sig.toStringRef() != signature)
      fail("cannot resume from '", path, "': it was written by a run with other options (",
           sig.isString() ? sig.toStringRef() : "unknown", "), this run is ", signature);
    read_state(a, path, t);
    torch::Tensor epoch;
    if (!a.try_read("epoch", epoch) || epoch.numel() != 1 || epoch.scalar_type() != torch::kLong)
      fail("cannot resume from '", path, "': it holds no epoch count (one int64)");
    const int64_t done = epoch.item<int64_t>();
    if (done < 0 || done > epochs)
      fail("cannot resume from '", path, "': it counts ", done, " epochs done, expected 0 to ",
           epochs);
    torch::serialize::InputArchive o;
    if (!a.try_read("optimizer", o))
      fail("cannot resume from '", path, "': it holds no optimizer state");
    opt.load(o);
    return static_cast<int>(done);
  });
}

}  // namespace

torch::Tensor renormalize(const torch::Tensor& x, const Network& from, const Network& to) {
  if (from.input_mean == to.input_mean && from.input_std == to.input_std) return x;
  if (from.input_mean.size() != to.input_mean.size() ||
      from.input_std.size() != to.input_std.size())
    fail("renormalize: ", from.arch, " normalizes ", from.input_mean.size(), " channels, ",
         to.arch, " ", to.input_mean.size());
  auto channel = [](const std::vector<double>& v) {
    return torch::tensor(std::vector<float>(v.begin(), v.end())).view({1, -1, 1, 1});
  };
  return (x * channel(from.input_std) + channel(from.input_mean) - channel(to.input_mean)) /
         channel(to.input_std);
}

torch::Tensor distillation_loss(const torch::Tensor& student, const torch::Tensor& teacher,
                                double temperature) {
  if (!(temperature > 0)) fail("distillation temperature ", temperature, ": expected > 0");
  if (student.sizes() != teacher.sizes())
    fail("distillation: student scores ", student.sizes(), " and teacher scores ",
         teacher.sizes(), " differ in shape");
  const auto log_p = torch::log_softmax(teacher.detach() / temperature, 1);
  const auto log_q = torch::log_softmax(student / temperature, 1);
  return (log_p.exp() * (log_p - log_q)).sum(1).mean() * (temperature * temperature);
}

torch::Tensor quantized_training_forward(const Network& net, const QuantFormats& q,
                                         const torch::Tensor& input) {
  const torch::Tensor x = fake_quantize(input, q.input);
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < net.blocks.size(); ++i) {
    const Block& b = net.blocks[i];
    std::vector<torch::Tensor> in;
    for (int j : b.inputs) in.push_back(j == Block::kNetworkInput ? x : out[j]);
    Block fq = b;
    if (b.weighted()) {
      // The bias is stored at the accumulator's scale 2^-(f_in + f_w).
      const int j = b.inputs[0];
      const int f_in = j == Block::kNetworkInput ? q.input.frac : q.act[j].frac;
      fq.weight = fake_quantize(b.weight, q.weight[i]);
      fq.bias = fake_quantize(b.bias, FixedPoint{q.bias_bits, f_in + q.weight[i].frac, true});
    }
    auto y = forward_block(fq, in);
    const bool site = i + 1 < net.blocks.size();
    out.push_back(site ? fake_quantize(y, q.act[i]) : y);
  }
  return out.back().flatten(1);
}

torch::Tensor augment_batch(const torch::Tensor& x, torch::Generator& gen, int pad, bool flip) {
  if (pad < 0) fail("augmentation padding ", pad, ": expected 0 or more pixels");
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  auto padded = torch::constant_pad_nd(x, {pad, pad, pad, pad}, 0.0);
  auto offsets = torch::randint(0, 2 * pad + 1, {n, 2}, gen, torch::kLong);
  // The flips are drawn even when unused, so the crop offsets do not depend on `flip`.
  auto flips = torch::randint(0, 2, {n}, gen, torch::kLong);
  auto out = torch::empty_like(x);
  auto off = offsets.accessor<int64_t, 2>();
  auto fl = flips.accessor<int64_t, 1>();
  for (int64_t i = 0; i < n; ++i) {
    auto crop = padded[i].slice(1, off[i][0], off[i][0] + h).slice(2, off[i][1], off[i][1] + w);
    out[i].copy_(flip && fl[i] ? crop.flip({2}) : crop);
  }
  return out;
}

torch::Tensor rotate_scale(const torch::Tensor& x, const torch::Tensor& degrees,
                           const torch::Tensor& scale) {
  if (x.dim() != 4) fail("rotate_scale: expected a batch N x C x H x W, got ", x.sizes());
  const int64_t n = x.size(0);
  if (degrees.numel() != n || scale.numel() != n)
    fail("rotate_scale: ", degrees.numel(), " angles and ", scale.numel(), " scales for ", n,
         " images");
  if (!(scale.gt(0).all().item<bool>())) fail("rotate_scale: scales must be positive");
  // affine_grid maps output coordinates (x right, y down, both in [-1, 1]) to input ones. The
  // output shows the input rotated by a and scaled by s when input = R(-a) / s · output, which
  // in these coordinates (y down) is the matrix [c -s; s c] / s for a counter-clockwise turn.
  const auto a = degrees.to(torch::kFloat32).reshape({n}) * static_cast<float>(M_PI / 180);
  const auto inv = 1 / scale.to(torch::kFloat32).reshape({n});
  const auto c = torch::cos(a) * inv, sn = torch::sin(a) * inv, zero = torch::zeros({n});
  // Non-square images: the grid's x and y are each normalized by their own side.
  const double h = static_cast<double>(x.size(2)), w = static_cast<double>(x.size(3));
  const auto theta = torch::stack({torch::stack({c, -sn * (h / w), zero}, 1),
                                   torch::stack({sn * (w / h), c, zero}, 1)}, 1);
  namespace F = torch::nn::functional;
  const auto grid = F::affine_grid(theta, x.sizes(), /*align_corners=*/false);
  return F::grid_sample(x, grid, F::GridSampleFuncOptions()
                                     .mode(torch::kBilinear)
                                     .padding_mode(torch::kZeros)
                                     .align_corners(false));
}

torch::Tensor random_rotate_scale(const torch::Tensor& x, torch::Generator& gen,
                                  double max_degrees, double max_scale) {
  if (!(max_degrees >= 0 && max_degrees <= 180))
    fail("augmentation rotation ", max_degrees, " degrees: expected 0 to 180");
  if (!(max_scale >= 0 && max_scale < 1))
    fail("augmentation scaling ", max_scale, ": expected at least 0 and below 1");
  const int64_t n = x.size(0);
  const auto u = torch::rand({2, n}, gen) * 2 - 1;  // uniform in [-1, 1)
  return rotate_scale(x, u[0] * max_degrees, 1 + u[1] * max_scale);
}

EpochReport train_network(Network& net, const Dataset& train, const Dataset& test,
                          const TrainOptions& o,
                          const std::function<void(const std::string&)>& log) {
  if (o.epochs < 1) fail("epochs ", o.epochs, ": expected at least 1");
  if (o.batch_size < 1) fail("batch_size ", o.batch_size, ": expected at least 1");
  if (!(o.lr > 0)) fail("lr ", o.lr, ": expected a positive learning rate");
  if (train.size() == 0) fail("training set '", train.name, "' is empty");
  check_images(net, train.images, train.name);
  if (net.num_classes() < static_cast<int64_t>(train.class_names.size()))
    fail("data set '", train.name, "' has ", train.class_names.size(), " classes but ", net.arch,
         " outputs ", net.num_classes());
  if (o.resume && o.checkpoint.empty())
    fail("resume: expected a checkpoint file to resume from (checkpoint is empty)");
  if (o.quantized && o.batchnorm)
    fail("quantization-aware training needs batch normalization off: a quantized model's "
         "formats belong to its folded weights");
  if (o.teacher && o.teacher->num_classes() != net.num_classes())
    fail("distillation: the teacher ", o.teacher->arch, " outputs ", o.teacher->num_classes(),
         " classes, the network ", net.num_classes());
  if (o.teacher && !(o.teacher->input == net.input))
    fail("distillation: the teacher ", o.teacher->arch, " takes images of ",
         o.teacher->input.str(), ", the network ", net.arch, " ", net.input.str());
  if (o.quantized && (o.quantized->act.size() != net.blocks.size() ||
                      o.quantized->weight.size() != net.blocks.size()))
    fail("quantization-aware training: formats for ", o.quantized->act.size(), " blocks, ",
         net.arch, " has ", net.blocks.size());
  auto test_accuracy = [&](const Network& n) {
    if (!test.size()) return 0.0;
    if (o.quantized) return QuantizedNetwork(n, *o.quantized).accuracy(test.images, test.labels);
    return float_accuracy(n, test.images, test.labels);
  };

  Trainer t(net, o.batchnorm, o.quantized);
  torch::optim::SGD opt(t.trainable(), torch::optim::SGDOptions(o.lr)
                                           .momentum(o.momentum)
                                           .nesterov(true)
                                           .weight_decay(o.weight_decay));
  const std::string signature = run_signature(net, o);
  int start = 0;
  if (!o.init.empty() && !o.resume) {
    init_from_checkpoint(o.init, t);
    log("initialized from " + o.init + " (warm restart)");
  }
  if (o.resume) {
    start = load_checkpoint(o.checkpoint, t, opt, signature, o.epochs);
    log("resumed from " + o.checkpoint + " after epoch " + std::to_string(start));
  }

  const int64_t n = train.size();
  const int64_t steps = (n + o.batch_size - 1) / o.batch_size;
  const double total = static_cast<double>(steps) * o.epochs;
  const double warm = std::max(1.0, o.warmup_epochs * steps);
  auto lr_at = [&](double step) {
    if (step < warm) return o.lr * (step + 1) / warm;
    return o.lr * 0.5 * (1 + std::cos(M_PI * (step - warm) / std::max(1.0, total - warm)));
  };

  EpochReport report;
  for (int epoch = start; epoch < o.epochs; ++epoch) {
    const auto t0 = Clock::now();
    // Every epoch draws from its own generator, so a resumed run repeats exactly.
    torch::Generator gen = at::detail::createCPUGenerator(o.seed * 1000003ULL + epoch);
    auto order = torch::randperm(n, gen, torch::kLong);
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    for (int64_t s = 0; s < steps; ++s) {
      auto idx = order.slice(0, s * o.batch_size, std::min(n, (s + 1) * o.batch_size));
      auto x = net.preprocess(train.images.index_select(0, idx));
      if (o.augment) x = augment_batch(x, gen, o.augment_pad, o.augment_flip);
      if (o.augment && o.rotates())
        x = random_rotate_scale(x, gen, o.augment_degrees, o.augment_scale);
      auto y = train.labels.index_select(0, idx);
      for (auto& g : opt.param_groups())
        static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr_at(double(epoch) * steps + s));
      opt.zero_grad();
      auto logits = t.forward(x, true);
      torch::Tensor loss;
      if (o.teacher) {
        torch::Tensor target;
        {
          torch::NoGradGuard no_grad;
          target = o.teacher->forward(renormalize(x, net, *o.teacher));
        }
        loss = distillation_loss(logits, target, o.temperature);
      } else {
        loss = torch::cross_entropy_loss(logits, y);
      }
      const double batch_loss = loss.item<double>();
      if (!std::isfinite(batch_loss))
        fail("training diverged: the loss of batch ", s + 1, " of epoch ", epoch + 1,
             " is not finite (", batch_loss, " at learning rate ", lr_at(double(epoch) * steps + s),
             "); try a lower lr (learning rate) than ", o.lr);
      loss.backward();
      opt.step();
      loss_sum += batch_loss * idx.size(0);
      correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      seen += idx.size(0);
      if (o.progress)
        o.progress({epoch + 1, o.epochs, s + 1, steps, loss_sum / seen,
                    static_cast<double>(correct) / seen, lr_at(double(epoch) * steps + s)});
      if (o.log_every > 0 && (s + 1) % o.log_every == 0) {
        const double el = std::chrono::duration<double>(Clock::now() - t0).count();
        const double per_step = el / (s + 1);
        const double left = per_step * (steps - s - 1) + per_step * steps * (o.epochs - epoch - 1);
        char buf[200];
        std::snprintf(buf, sizeof buf, "epoch %d/%d batch %lld/%lld loss %.4f acc %.2f%% lr %.4f, %s left",
                      epoch + 1, o.epochs, (long long)(s + 1), (long long)steps, loss_sum / seen,
                      100.0 * correct / seen, lr_at(double(epoch) * steps + s),
                      format_duration(left).c_str());
        log(buf);
      }
    }
    report.epoch = epoch + 1;
    report.train_loss = loss_sum / seen;
    report.train_accuracy = double(correct) / seen;
    report.test_accuracy = test_accuracy(t.folded());
    report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!o.checkpoint.empty()) save_checkpoint(o.checkpoint, t, opt, epoch + 1, signature);
    char tested[40] = "";
    if (test.size()) std::snprintf(tested, sizeof tested, ", test acc %.2f%%", 100 * report.test_accuracy);
    char buf[200];
    std::snprintf(buf, sizeof buf, "epoch %d/%d done in %s: loss %.4f, train acc %.2f%%%s, %s left",
                  epoch + 1, o.epochs, format_duration(report.seconds).c_str(), report.train_loss,
                  100 * report.train_accuracy, tested,
                  format_duration(report.seconds * (o.epochs - epoch - 1)).c_str());
    log(buf);
  }
  net = t.folded();
  for (Block& b : net.blocks)
    if (b.weighted()) {
      b.weight = b.weight.detach();
      b.bias = b.bias.detach();
    }
  if (start >= o.epochs) report.test_accuracy = test_accuracy(net);
  return report;
}

}  // namespace flipguard
