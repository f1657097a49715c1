#include <flipguard/error.hpp>
#include <flipguard/limits.hpp>
#include <flipguard/network.hpp>

#include <algorithm>
#include <cmath>

namespace flipguard {

namespace F = torch::nn::functional;

std::string Shape::str() const {
  return std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
}

namespace {

int64_t pooled_extent(int64_t n, const PoolSpec& p) {
  const int64_t span = n + 2 * p.padding - p.kernel;
  int64_t out = (p.ceil_mode ? (span + p.stride - 1) / p.stride : span / p.stride) + 1;
  // As PyTorch: the last window must start inside the input or left padding.
  if (p.ceil_mode && (out - 1) * p.stride >= n + p.padding) --out;
  return out;
}


void check_pool(const Block& b, const PoolSpec& p, const Shape& in) {
  if (p.kind == PoolKind::None || p.kind == PoolKind::GlobalAvg) return;
  if (p.kernel < 1 || p.stride < 1 || p.padding < 0 || 2 * p.padding > p.kernel)
    fail("block '", b.name, "': invalid pooling window kernel ", p.kernel, " stride ", p.stride,
         " padding ", p.padding, ": expected kernel >= 1, stride >= 1, 0 <= padding <= kernel/2");
  if (in.h + 2 * p.padding < p.kernel || in.w + 2 * p.padding < p.kernel)
    fail("block '", b.name, "': pooling kernel ", p.kernel, " is larger than its input ", in.str());
}

}  // namespace

Shape pooled_shape(const Shape& s, const PoolSpec& p) {
  switch (p.kind) {
    case PoolKind::None: return s;
    case PoolKind::GlobalAvg: return {s.c, 1, 1};
    default: return {s.c, pooled_extent(s.h, p), pooled_extent(s.w, p)};
  }
}

std::vector<Shape> Network::shapes(std::vector<Shape>* before_post) const {
  std::vector<Shape> out;
  if (before_post) before_post->clear();
  out.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Block& b = blocks[i];
    if (b.inputs.empty()) fail("block '", b.name, "' (", i, ") has no input");
    std::vector<Shape> in;
    for (int j : b.inputs) {
      if (j != Block::kNetworkInput && (j < 0 || j >= static_cast<int>(i)))
        fail("block '", b.name, "' (", i, ") reads block ", j,
             ": expected an earlier block or the network input (-1)");
      in.push_back(j == Block::kNetworkInput ? input : out[j]);
    }
    const bool several = b.op == Op::Concat || b.op == Op::Add;
    if (!several && in.size() != 1)
      fail("block '", b.name, "' has ", in.size(),
           " inputs: only concatenation and addition take several");
    if (b.groups != 1 && (b.op != Op::Conv || b.groups < 1))
      fail("block '", b.name, "': groups ", b.groups,
           ": expected 1, or a positive number of groups for a convolution");
    if (std::isnan(b.clamp_min) || std::isnan(b.clamp_max) || !(b.act_lo() < b.act_hi()))
      fail("block '", b.name, "': activation bounds [", b.act_lo(), ", ", b.act_hi(),
           "]: expected lower < upper");
    Shape s;
    switch (b.op) {
      case Op::Conv: {
        if (!b.weight.defined() || b.weight.dim() != 4)
          fail("block '", b.name, "': convolution weight must be 4-D (K x C x k x k)");
        const int64_t eff = b.dilation * (b.kernel - 1) + 1;
        if (in[0].c % b.groups != 0 || b.out_channels % b.groups != 0)
          fail("block '", b.name, "': ", b.groups, " groups do not divide its ", in[0].c,
               " input and ", b.out_channels, " output channels");
        if (b.weight.size(0) != b.out_channels || b.weight.size(1) != in[0].c / b.groups ||
            b.weight.size(2) != b.kernel || b.weight.size(3) != b.kernel)
          fail("block '", b.name, "': weight shape ", b.weight.sizes(), " does not match ",
               b.out_channels, "x", in[0].c / b.groups, "x", b.kernel, "x", b.kernel);
        if (b.stride < 1 || b.padding < 0 || b.dilation < 1)
          fail("block '", b.name, "': stride ", b.stride, ", padding ", b.padding, ", dilation ",
               b.dilation, ": expected stride >= 1, padding >= 0, dilation >= 1");
        if (in[0].h + 2 * b.padding < eff || in[0].w + 2 * b.padding < eff)
          fail("block '", b.name, "': kernel ", b.kernel, " larger than padded input ", in[0].str());
        s = {b.out_channels, (in[0].h + 2 * b.padding - eff) / b.stride + 1,
             (in[0].w + 2 * b.padding - eff) / b.stride + 1};
        break;
      }
      case Op::Linear:
        if (!b.weight.defined() || b.weight.dim() != 2 || b.weight.size(0) != b.out_channels ||
            b.weight.size(1) != in[0].numel())
          fail("block '", b.name, "': fully-connected weight must be ", b.out_channels, "x",
               in[0].numel(), " for input ", in[0].str());
        s = {b.out_channels, 1, 1};
        break;
      case Op::Pool:
        if (b.pool.kind == PoolKind::None) fail("block '", b.name, "': pooling block without a kind");
        check_pool(b, b.pool, in[0]);
        s = pooled_shape(in[0], b.pool);
        break;
      case Op::Concat:
        if (in.size() < 2) fail("block '", b.name, "': concatenation needs two or more inputs");
        s = in[0];
        for (size_t k = 1; k < in.size(); ++k) {
          if (in[k].h != s.h || in[k].w != s.w)
            fail("block '", b.name, "': concatenated inputs differ in size: ", in[0].str(), " and ",
                 in[k].str());
          s.c += in[k].c;
        }
        break;
      case Op::Add:
        if (in.size() < 2) fail("block '", b.name, "': addition needs two or more inputs");
        s = in[0];
        for (size_t k = 1; k < in.size(); ++k)
          if (!(in[k] == s))
            fail("block '", b.name, "': added inputs differ in shape: ", in[0].str(), " and ",
                 in[k].str());
        break;
    }
    if (b.weighted() && (!b.bias.defined() || b.bias.dim() != 1 || b.bias.size(0) != b.out_channels))
      fail("block '", b.name, "': bias must have ", b.out_channels, " elements");
    check_pool(b, b.post, s);
    if (before_post) before_post->push_back(s);
    out.push_back(pooled_shape(s, b.post));
  }
  return out;
}

void check_input_shape(const Shape& s, const std::string& what) {
  for (const int64_t side : {s.c, s.h, s.w})
    if (side < 1 || side > kMaxInputSide)
      fail(what, " ", s.c, "x", s.h, "x", s.w, ": expected sides of 1 to ", kMaxInputSide);
  if (s.c * s.h * s.w > kMaxInputValues)
    fail(what, " ", s.str(), " has ", s.numel(), " values an image; expected at most ",
         kMaxInputValues);
}

void Network::validate() const {
  if (blocks.empty()) fail("network '", arch, "' has no blocks");
  check_input_shape(input, "network '" + arch + "': input shape");
  if (input_mean.size() != static_cast<size_t>(input.c) ||
      input_std.size() != static_cast<size_t>(input.c))
    fail("network '", arch, "': pre-processing needs ", input.c, " means and standard deviations");
  for (double s : input_std)
    if (!(s > 0)) fail("network '", arch, "': input standard deviation ", s, " must be > 0");
  for (double m : input_mean)
    if (!std::isfinite(m)) fail("network '", arch, "': input mean ", m, " must be a finite number");
  shapes();
  // A NaN or infinite weight would flow into every score and calibration (quantize once wrote a
  // 21.9 % model from one): refused wherever a network is built, loaded or imported.
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Block& b = blocks[i];
    if (!b.weighted()) continue;
    for (const auto& [what, t] : {std::pair{"weights", &b.weight}, std::pair{"biases", &b.bias}}) {
      const int64_t bad = t->defined() ? (~torch::isfinite(*t)).sum().item<int64_t>() : 0;
      if (bad > 0)
        fail("network '", arch, "': block ", i, " '", b.name, "' has ", bad, " of ", t->numel(),
             " ", what, " that are not finite numbers (NaN or infinite)");
    }
  }
}

int64_t Network::batch_within(int64_t wanted, int64_t budget) const {
  std::vector<Shape> pre;
  const auto out = shapes(&pre);
  int64_t kept = input.numel() * 8, largest = 0;
  for (size_t b = 0; b < out.size(); ++b) {
    kept += out[b].numel() * 4;
    largest = std::max(largest, pre[b].numel() * 8 * 3);
  }
  return std::max<int64_t>(1, std::min(wanted, budget / (kept + largest)));
}

std::vector<int> Network::sites() const {
  std::vector<int> s;
  for (int i = 0; i + 1 < static_cast<int>(blocks.size()); ++i) s.push_back(i);
  return s;
}

int64_t Network::num_classes() const { return shapes().back().numel(); }

std::vector<torch::Tensor> Network::parameters() const {
  std::vector<torch::Tensor> p;
  for (const Block& b : blocks)
    if (b.weighted()) {
      p.push_back(b.weight);
      p.push_back(b.bias);
    }
  return p;
}

torch::Tensor Network::preprocess(const torch::Tensor& images) const {
  auto x = images.to(torch::kFloat32).div(255.0);
  auto mean = torch::tensor(std::vector<float>(input_mean.begin(), input_mean.end()));
  auto std = torch::tensor(std::vector<float>(input_std.begin(), input_std.end()));
  return (x - mean.view({1, -1, 1, 1})) / std.view({1, -1, 1, 1});
}

torch::Tensor apply_pool(const torch::Tensor& x, const PoolSpec& p) {
  switch (p.kind) {
    case PoolKind::None: return x;
    case PoolKind::Max:
      return torch::max_pool2d(x, {p.kernel, p.kernel}, {p.stride, p.stride},
                               {p.padding, p.padding}, {1, 1}, p.ceil_mode);
    case PoolKind::Avg:
      return torch::avg_pool2d(x, {p.kernel, p.kernel}, {p.stride, p.stride},
                               {p.padding, p.padding}, p.ceil_mode, /*count_include_pad=*/true);
    case PoolKind::GlobalAvg: return x.mean({2, 3}, /*keepdim=*/true);
  }
  return x;
}

torch::Tensor Network::forward_block(int i, const std::vector<torch::Tensor>& in) const {
  return flipguard::forward_block(blocks[i], in);
}

torch::Tensor forward_block(const Block& b, const std::vector<torch::Tensor>& in) {
  torch::Tensor y;
  switch (b.op) {
    case Op::Conv:
      y = torch::conv2d(in[0], b.weight, b.bias, {b.stride, b.stride}, {b.padding, b.padding},
                        {b.dilation, b.dilation}, b.groups);
      break;
    case Op::Linear:
      y = torch::linear(in[0].flatten(1), b.weight, b.bias).view({in[0].size(0), -1, 1, 1});
      break;
    case Op::Pool: y = apply_pool(in[0], b.pool); break;
    case Op::Concat: y = torch::cat(in, 1); break;
    case Op::Add:
      y = in[0];
      for (size_t k = 1; k < in.size(); ++k) y = y + in[k];
      break;
  }
  return apply_pool(activate(b, y), b.post);
}

torch::Tensor activate(const Block& b, const torch::Tensor& y) {
  torch::Tensor a = b.relu ? torch::relu(y) : y;
  if (b.clamps()) {
    const double lo = b.act_lo(), hi = b.act_hi();
    if (std::isinf(lo)) a = a.clamp_max(hi);
    else if (std::isinf(hi)) a = a.clamp_min(lo);
    else a = a.clamp(lo, hi);
  }
  return a;
}

std::vector<torch::Tensor> Network::forward_all(const torch::Tensor& x) const {
  std::vector<torch::Tensor> out;
  out.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::vector<torch::Tensor> in;
    for (int j : blocks[i].inputs) in.push_back(j == Block::kNetworkInput ? x : out[j]);
    out.push_back(forward_block(static_cast<int>(i), in));
  }
  return out;
}

torch::Tensor Network::forward(const torch::Tensor& x) const {
  return forward_all(x).back().flatten(1);
}

Network Network::clone() const {
  Network n = *this;
  for (Block& b : n.blocks) {
    if (b.weight.defined()) b.weight = b.weight.detach().clone();
    if (b.bias.defined()) b.bias = b.bias.detach().clone();
  }
  return n;
}

double float_accuracy(const Network& net, const torch::Tensor& images, const torch::Tensor& labels,
                      int64_t batch) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  const int64_t n = images.size(0);
  batch = net.batch_within(batch);
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t e = std::min(n, s + batch);
    auto pred = net.forward(net.preprocess(images.slice(0, s, e))).argmax(1);
    correct += pred.eq(labels.slice(0, s, e)).sum().item<int64_t>();
  }
  return n ? static_cast<double>(correct) / n : 0.0;
}

void check_images(const Network& net, const torch::Tensor& images, const std::string& data_name) {
  if (images.dim() != 4)
    fail("data set '", data_name, "' has images of ", images.dim(), " dimensions, expected N x C x H x W");
  const Shape in{images.size(1), images.size(2), images.size(3)};
  if (!(in == net.input))
    fail("data set '", data_name, "' has images of ", in.str(), " but the model (", net.arch,
         ") expects ", net.input.str());
}

}  // namespace flipguard
