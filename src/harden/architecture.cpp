#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>

#include <algorithm>

namespace flipguard {

namespace {

/// Blocks that read block `b`.
std::vector<int> readers_of(const Network& net, int b) {
  std::vector<int> r;
  for (size_t i = 0; i < net.blocks.size(); ++i)
    for (int j : net.blocks[i].inputs)
      if (j == b) {
        r.push_back(static_cast<int>(i));
        break;
      }
  return r;
}

/// Why the global average pooling of site `b` cannot move behind its reader; empty when it can.
std::string why_not_movable(const Network& net, int b) {
  const Block& s = net.blocks[b];
  const bool pool_block = s.op == Op::Pool && s.pool.kind == PoolKind::GlobalAvg;
  if (!pool_block && s.post.kind != PoolKind::GlobalAvg)
    return "it is not the output of a global average pooling";
  if (pool_block && (s.relu || s.post.kind != PoolKind::None))
    return "its global average pooling is followed by a ReLU or another pooling";
  if (pool_block && s.clamps())
    return "its global average pooling is followed by a clamp, which does not commute with the "
           "reader";
  const std::vector<int> readers = readers_of(net, b);
  if (readers.size() != 1)
    return "it is read by " + std::to_string(readers.size()) + " blocks, not by exactly one";
  const Block& r = net.blocks[readers[0]];
  if (r.op == Op::Conv) {
    if (r.kernel != 1 || r.stride != 1 || r.padding != 0)
      return "its reader '" + r.name + "' is a " + std::to_string(r.kernel) + "x" +
             std::to_string(r.kernel) + " convolution with stride " + std::to_string(r.stride) +
             " and padding " + std::to_string(r.padding) + ", not a 1x1 one with stride 1 and no padding";
  } else if (r.op != Op::Linear) {
    return "its reader '" + r.name + "' is neither a 1x1 convolution nor fully-connected";
  }
  if (r.relu || r.post.kind != PoolKind::None)
    return "its reader '" + r.name + "' has a ReLU or a pooling, which do not commute with the average";
  if (r.clamps())
    return "its reader '" + r.name + "' has a clamp, which does not commute with the average";
  return {};
}

}  // namespace

std::vector<Bottleneck> find_bottlenecks(const Network& net, const ArchitectureOptions& o) {
  if (!(o.bottleneck_ratio > 0 && o.bottleneck_ratio <= 1))
    fail("bottleneck ratio ", o.bottleneck_ratio, ": expected a fraction in (0, 1]");
  const std::vector<Shape> shapes = net.shapes();
  const std::vector<int> sites = net.sites();
  if (sites.empty()) return {};
  std::vector<int64_t> counts;
  for (int s : sites) counts.push_back(shapes[s].numel());
  std::sort(counts.begin(), counts.end());
  const int64_t median = counts[(counts.size() - 1) / 2];
  std::vector<Bottleneck> out;
  for (int s : sites)
    if (static_cast<double>(shapes[s].numel()) < o.bottleneck_ratio * static_cast<double>(median))
      out.push_back({s, net.blocks[s].name, shapes[s], median, false, {}});
  return out;
}

Network optimize_architecture(const Network& input, ArchitectureReport& report,
                              const ArchitectureOptions& o) {
  input.validate();
  report = {};
  report.bottlenecks = find_bottlenecks(input, o);
  Network net = input.clone();
  std::vector<int> removed;  // pooling blocks to delete, original indices
  for (Bottleneck& bn : report.bottlenecks) {
    const std::string why = why_not_movable(input, bn.block);
    if (!why.empty()) {
      bn.action = "not changed: " + why;
      continue;
    }
    const int reader = readers_of(input, bn.block)[0];
    Block& s = net.blocks[bn.block];
    Block& r = net.blocks[reader];
    if (r.op == Op::Linear) {
      // Its input is C x 1 x 1, so the weight K x C is a 1x1 convolution's K x C x 1 x 1.
      r.op = Op::Conv;
      r.kernel = 1;
      r.stride = 1;
      r.padding = 0;
      r.dilation = 1;
      r.weight = r.weight.reshape({r.out_channels, -1, 1, 1});
    }
    r.post = PoolSpec::global_avg();
    if (s.op == Op::Pool) {
      r.inputs = s.inputs;
      removed.push_back(bn.block);
      bn.action = "moved the global average pooling '" + s.name + "' behind '" + r.name +
                  "'; the site is now the " + input.shapes()[s.inputs[0]].str() + " output of '" +
                  input.blocks[s.inputs[0]].name + "'";
    } else {
      s.post = {};
      bn.action = "moved the global average pooling behind '" + s.name + "' to behind '" +
                  r.name + "'; the site is now " + net.shapes()[bn.block].str();
    }
    bn.fixed = true;
    ++report.moved;
  }
  if (!removed.empty()) {
    // Delete the pooling blocks and renumber the inputs of the blocks after them.
    std::vector<int> index(net.blocks.size());
    std::vector<Block> kept;
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      if (std::find(removed.begin(), removed.end(), static_cast<int>(i)) != removed.end()) {
        index[i] = -2;
        continue;
      }
      index[i] = static_cast<int>(kept.size());
      kept.push_back(net.blocks[i]);
    }
    for (Block& b : kept)
      for (int& j : b.inputs)
        if (j != Block::kNetworkInput) j = index[j];
    net.blocks = std::move(kept);
  }
  if (report.moved > 0) net.arch += "-opt";
  net.validate();
  return net;
}

}  // namespace flipguard

namespace flipguard {

double max_score_difference(const Network& a, const Network& b, const Dataset& test) {
  torch::NoGradGuard no_grad;
  const auto x = a.preprocess(test.images);
  return (a.forward(x) - b.forward(x)).abs().max().item<double>();
}

ArchitectureRun harden_architecture(const Model& m, const Dataset& train, const Dataset& test,
                                    const ArchitectureRunOptions& o) {
  if (m.quant && train.size() == 0)
    fail("architectural optimization of the quantized model '", o.from,
         "': no training images "
         "to choose the formats of the changed sites; expected a data set (or the float model, "
         "quantized afterwards)");
  ArchitectureRun run;
  const Network net = optimize_architecture(m.net, run.report, o.arch);
  nlohmann::json found = nlohmann::json::array();
  for (const Bottleneck& b : run.report.bottlenecks)
    found.push_back({{"block", b.block},
                     {"name", b.name},
                     {"shape", b.shape.str()},
                     {"neurons", b.shape.numel()},
                     {"median_neurons", b.median_neurons},
                     {"fixed", b.fixed},
                     {"action", b.action}});
  run.model = Model{net, std::nullopt, m.meta};
  nlohmann::json& meta = run.model.meta;
  meta["harden"] = {{"method", "architecture"},
                    {"command", o.command},
                    {"from", o.from},
                    {"bottlenecks", found},
                    {"moved", run.report.moved}};
  if (test.size() == 0) return run;
  check_images(m.net, test.images, test.name);
  run.checked_images = std::min<int64_t>(o.check_images, test.size());
  run.max_difference = max_score_difference(m.net, net, test.head(o.check_images));
  meta["harden"]["max_float_score_difference"] = run.max_difference;
  meta["float_test_accuracy"] = float_accuracy(net, test.images, test.labels);
  if (m.quant) {  // the changed sites need formats: the input's word length and signedness
    QuantOptions q;
    q.bits = m.quant->input.bits;
    q.is_signed = m.quant->act.empty() || m.quant->act.front().is_signed;
    q.progress = o.progress;
    run.model.quant = calibrate(net, train.head(q.calibration_images).images, q);
    meta["quantized_test_accuracy"] =
        QuantizedNetwork(net, *run.model.quant).accuracy(test.images, test.labels);
    run.requantized = q;
  }
  return run;
}

}  // namespace flipguard
