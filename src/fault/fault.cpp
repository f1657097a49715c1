// Faults, the golden run and the reference engine.
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>

#include <algorithm>

namespace flipguard {

std::string to_string(FaultTarget t) {
  return t == FaultTarget::Activations ? "activations" : "weights";
}

int64_t flip_bit(int64_t code, int bit, const FixedPoint& f) {
  if (bit < 0 || bit >= f.bits) fail("bit ", bit, " of a ", f.bits, "-bit code: expected 0..", f.bits - 1);
  if (code < f.min_code() || code > f.max_code())
    fail("code ", code, " is outside ", f.str(), "'s [", f.min_code(), ", ", f.max_code(), "]");
  const int64_t word = int64_t{1} << f.bits;
  int64_t u = code & (word - 1);  // the stored bit pattern
  u ^= int64_t{1} << bit;
  return f.clamp(f.is_signed && u > f.max_code() ? u - word : u);
}

torch::Tensor flip_bits(const torch::Tensor& codes, int bit, const FixedPoint& f) {
  if (bit < 0 || bit >= f.bits) fail("bit ", bit, " of a ", f.bits, "-bit code: expected 0..", f.bits - 1);
  const int64_t word = int64_t{1} << f.bits;
  auto u = torch::bitwise_xor(torch::bitwise_and(codes.to(torch::kInt64), word - 1),
                              int64_t{1} << bit);
  if (f.is_signed) u = torch::where(u > f.max_code(), u - word, u);
  if (f.restricted) u = u.clamp(f.lo(), f.hi());
  return u.to(codes.scalar_type());
}

namespace {

/// The narrowest integer type that holds every code of a format.
torch::ScalarType storage_type(const FixedPoint& f) {
  if (f.bits <= 8) return f.is_signed ? torch::kInt8 : torch::kUInt8;
  if (f.bits <= 16 && f.is_signed) return torch::kInt16;
  return torch::kInt32;
}

torch::Tensor predict(const torch::Tensor& scores) { return scores.flatten(1).argmax(1); }

}  // namespace

int64_t GoldenRun::bytes_per_image(const QuantizedNetwork& q) {
  const Network& net = q.network();
  const auto& fmt = q.formats();
  auto bytes = [](const Shape& s, const FixedPoint& f) {
    return s.numel() * static_cast<int64_t>(torch::elementSize(storage_type(f)));
  };
  int64_t n = bytes(net.input, fmt.input);
  const std::vector<Shape> shapes = net.shapes();
  for (size_t b = 0; b + 1 < shapes.size(); ++b) n += bytes(shapes[b], fmt.act[b]);
  return n;
}

GoldenRun::GoldenRun(const QuantizedNetwork& q, const torch::Tensor& images,
                     const torch::Tensor& labels, int64_t chunk, const ProgressFn& progress) {
  torch::NoGradGuard no_grad;
  if (images.size(0) != labels.size(0))
    fail("golden run: ", images.size(0), " images but ", labels.size(0), " labels");
  if (chunk < 1) fail("golden run: chunk of ", chunk, " images, expected at least 1");
  const auto& fmt = q.formats();
  const int nb = static_cast<int>(q.network().blocks.size());
  std::vector<torch::Tensor> preds, idx, inputs, scores;
  std::vector<std::vector<torch::Tensor>> sites(nb - 1);
  const int64_t step = q.network().batch_within(chunk);  // bounded memory for large networks
  const int64_t n = images.size(0);
  report(progress, "golden run", 0, n, "images");
  for (int64_t s = 0; s < n; s += step) {
    const int64_t e = std::min(n, s + step);
    const torch::Tensor x = q.quantize_input(images.slice(0, s, e));
    const auto out = q.forward_all(x);
    const torch::Tensor pred = predict(out.back());
    const torch::Tensor ok = pred.eq(labels.slice(0, s, e)).nonzero().flatten();
    preds.push_back(pred);
    idx.push_back(ok + s);
    inputs.push_back(x.index_select(0, ok).to(storage_type(fmt.input)));
    scores.push_back(out.back().flatten(1).index_select(0, ok));
    for (int b = 0; b + 1 < nb; ++b)
      sites[b].push_back(out[b].index_select(0, ok).to(storage_type(fmt.act[b])));
    report(progress, "golden run", e, n, "images");
  }
  auto cat = [](const std::vector<torch::Tensor>& v, torch::ScalarType t) {
    return v.empty() ? torch::empty({0}, t) : torch::cat(v);
  };
  predicted_ = cat(preds, torch::kInt64);
  correct_index_ = cat(idx, torch::kInt64);
  labels_ = labels.to(torch::kInt64).index_select(0, correct_index_);
  scores_ = cat(scores, torch::kFloat64);
  input_ = cat(inputs, storage_type(fmt.input));
  // Each site's pieces go as soon as they are joined: the peak is the codes plus one site's.
  for (int b = 0; b + 1 < nb; ++b) {
    sites_.push_back(cat(sites[b], storage_type(fmt.act[b])));
    std::vector<torch::Tensor>().swap(sites[b]);
  }
}

torch::Tensor GoldenRun::codes(int b, int64_t begin, int64_t end) const {
  const torch::Tensor& t = b == Block::kNetworkInput ? input_ : sites_.at(b);
  return t.slice(0, begin, end).to(torch::kFloat32);
}

void check_fault(const QuantizedNetwork& q, FaultTarget target, const Fault& f) {
  const Network& net = q.network();
  const int nb = static_cast<int>(net.blocks.size());
  if (target == FaultTarget::Activations) {
    if (f.block < 0 || f.block >= nb - 1)
      fail("fault in site ", f.block, ": ", net.arch, " has sites 0..", nb - 2);
    const int64_t n = net.shapes()[f.block].numel();
    if (f.index < 0 || f.index >= n)
      fail("fault in neuron ", f.index, " of site ", f.block, ": expected 0..", n - 1);
    const int bits = q.formats().act[f.block].bits;
    if (f.bit < 0 || f.bit >= bits) fail("fault in bit ", f.bit, ": expected 0..", bits - 1);
    return;
  }
  if (f.block < 0 || f.block >= nb || !net.blocks[f.block].weighted())
    fail("weight fault in block ", f.block, ": it is not a weighted block of ", net.arch);
  const int64_t n = net.blocks[f.block].weight.numel();
  if (f.index < 0 || f.index >= n)
    fail("fault in weight ", f.index, " of block ", f.block, ": expected 0..", n - 1);
  const int bits = q.formats().weight[f.block].bits;
  if (f.bit < 0 || f.bit >= bits) fail("fault in bit ", f.bit, ": expected 0..", bits - 1);
}

ReferenceEngine::ReferenceEngine(const QuantizedNetwork& q, const GoldenRun& golden,
                                 FaultTarget target, const EngineOptions& o)
    : q_(q), g_(golden), target_(target), o_(o) {
  if (o_.chunk < 1) fail("engine chunk of ", o_.chunk, " images: expected at least 1");
  o_.chunk = q.network().batch_within(o_.chunk);  // bounded memory for large networks
}

torch::Tensor ReferenceEngine::failed(const std::vector<Fault>& faults) {
  return predict(scores(faults)).ne(g_.correct_labels());
}

torch::Tensor ReferenceEngine::scores(const std::vector<Fault>& faults) {
  torch::NoGradGuard no_grad;
  const int nb = static_cast<int>(q_.network().blocks.size());
  torch::Tensor result = g_.scores().clone();
  if (faults.empty() || g_.correct() == 0) return result;
  int first = nb;
  for (const Fault& f : faults) {
    check_fault(q_, target_, f);
    first = std::min(first, f.block);
  }
  // Weight faults: a copy of the network whose stored weight codes carry the flips.
  std::unique_ptr<QuantizedNetwork> faulty;
  if (target_ == FaultTarget::Weights) {
    faulty = std::make_unique<QuantizedNetwork>(q_);
    std::vector<torch::Tensor> w(nb);
    for (const Fault& f : faults) {
      if (!w[f.block].defined()) w[f.block] = q_.weight_codes(f.block).clone();
      auto flat = w[f.block].view(-1);
      flat[f.index] = static_cast<double>(
          flip_bit(static_cast<int64_t>(flat[f.index].item<float>()), f.bit, q_.formats().weight[f.block]));
    }
    for (int b = 0; b < nb; ++b)
      if (w[b].defined()) faulty->set_weight_codes(b, w[b]);
  }
  const QuantizedNetwork& net = faulty ? *faulty : q_;
  for (int64_t s = 0; s < g_.correct(); s += o_.chunk) {
    const int64_t e = std::min(g_.correct(), s + o_.chunk);
    std::vector<torch::Tensor> out(nb);
    auto input = [&](int j) {
      if (j != Block::kNetworkInput && out[j].defined()) return out[j];
      return g_.codes(j, s, e);
    };
    for (int b = first; b < nb; ++b) {
      if (target_ == FaultTarget::Weights || b > first) {
        std::vector<torch::Tensor> in;
        for (int j : net.network().blocks[b].inputs) in.push_back(input(j));
        out[b] = net.forward_block(b, in);
      } else {
        out[b] = g_.codes(b, s, e);  // the faulty site as written by its block
      }
      if (target_ != FaultTarget::Activations) continue;
      out[b] = out[b].contiguous();
      // The flips happen in the site's memory, after the block wrote it and before any reader.
      auto flat = out[b].view({e - s, -1});
      for (const Fault& f : faults)
        if (f.block == b) {
          auto col = flat.select(1, f.index);
          col.copy_(flip_bits(col, f.bit, q_.formats().act[b]));
        }
    }
    result.slice(0, s, e).copy_(out.back().flatten(1));
  }
  return result;
}

int64_t ReferenceEngine::failures(const std::vector<Fault>& faults) {
  return failed(faults).sum().item<int64_t>();
}

bool Engine::image_major(const std::vector<std::vector<Fault>>&) const { return false; }

void Engine::failures_over(const std::vector<std::vector<Fault>>& sets, int64_t, int64_t, int,
                           std::vector<int64_t>&) {
  fail("this engine evaluates fault sets one at a time, not image by image (", sets.size(),
       " fault sets given)");
}

const std::vector<std::string>& engine_names() {
  static const std::vector<std::string> names{"cone", "incremental", "reference"};
  return names;
}

std::unique_ptr<Engine> make_engine(const std::string& name, const QuantizedNetwork& q,
                                    const GoldenRun& golden, FaultTarget target,
                                    const EngineOptions& o) {
  if (name == "reference") return std::make_unique<ReferenceEngine>(q, golden, target, o);
  if (name == "cone") return std::make_unique<ConeEngine>(q, golden, target, o);
  if (name == "incremental") return std::make_unique<IncrementalEngine>(q, golden, target, o);
  fail("unknown engine '", name, "': expected one of ", join(engine_names()));
}

}  // namespace flipguard
