// Layer-wise relevance propagation on the quantized network: the z+ rule (eq. 2), the input
// rules, pooling, and the mean relevance over a data set (eq. 3).
#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>

#include <cmath>
#include <functional>
#include <tuple>

namespace flipguard {

const std::vector<std::string>& input_rule_names() {
  static const std::vector<std::string> names{"auto", "zplus", "zb"};
  return names;
}

InputRule parse_input_rule(const std::string& name) {
  if (name == "auto") return InputRule::Auto;
  if (name == "zplus") return InputRule::ZPlus;
  if (name == "zb") return InputRule::ZB;
  fail("unknown input rule '", name, "': expected one of ", join(input_rule_names()));
}

std::string to_string(InputRule r) {
  switch (r) {
    case InputRule::Auto: return "auto";
    case InputRule::ZPlus: return "zplus";
    case InputRule::ZB: return "zb";
  }
  return "?";
}

namespace {

using LinearMap = std::function<torch::Tensor(const torch::Tensor&)>;

/// The linear part (no bias) of a weighted layer with weights w, applied to x.
torch::Tensor linear_part(const Block& layer, const torch::Tensor& w, const torch::Tensor& x) {
  switch (layer.op) {
    case Op::Conv:
      return torch::conv2d(x, w, {}, {layer.stride, layer.stride}, {layer.padding, layer.padding},
                           {layer.dilation, layer.dilation}, layer.groups);
    case Op::Linear: return torch::linear(x.flatten(1), w).view({x.size(0), -1, 1, 1});
    default:
      fail("block '", layer.name, "' has no weights: expected a convolution or fully-connected ",
           "layer");
  }
}

LinearMap layer_map(const Block& layer, const torch::Tensor& w) {
  return [&layer, w](const torch::Tensor& x) { return linear_part(layer, w, x); };
}

/// The transpose of the linear map f applied to s (a vector-Jacobian product, taken by autograd
/// so that strides, padding and dilation need no rule of their own).
torch::Tensor transpose(const LinearMap& f, const torch::Tensor& like, const torch::Tensor& s) {
  torch::AutoGradMode grad(true);
  auto x = torch::zeros_like(like).requires_grad_(true);
  auto y = f(x);
  return torch::autograd::grad({y}, {x}, {s})[0];
}

/// r / z where z > 0, else 0: an output without positive contributions passes nothing on.
torch::Tensor ratio(const torch::Tensor& r, const torch::Tensor& z, const std::string& where) {
  if (!r.sizes().equals(z.sizes()))
    fail("relevance of shape ", r.sizes(), " does not fit the ", z.sizes(), " outputs of ", where);
  return torch::where(z > 0, r / z, torch::zeros_like(r));
}

torch::Tensor f64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

bool has_negative(const torch::Tensor& x) { return (x < 0).any().item<bool>(); }

/// The denominator of the z+ rule per output: Σ_j max(0, f_j w_jk).
torch::Tensor zplus_z(const Block& layer, const torch::Tensor& w, const torch::Tensor& x) {
  auto z = linear_part(layer, w.clamp_min(0), x.clamp_min(0));
  if (has_negative(x)) z = z + linear_part(layer, w.clamp_max(0), x.clamp_max(0));
  return z;
}

/// Per-channel bounds broadcast to the shape of x.
torch::Tensor channel_bound(const torch::Tensor& bound, const torch::Tensor& x) {
  return f64(bound).view({1, -1, 1, 1}).expand_as(x).contiguous();
}

/// The denominator of the z^B rule per output.
torch::Tensor zb_z(const Block& layer, const torch::Tensor& w, const torch::Tensor& x,
                   const torch::Tensor& lo, const torch::Tensor& hi) {
  return linear_part(layer, w, x) - linear_part(layer, w.clamp_min(0), lo) -
         linear_part(layer, w.clamp_max(0), hi);
}

}  // namespace

torch::Tensor zplus_rule(const Block& layer, const torch::Tensor& weight, const torch::Tensor& in,
                         const torch::Tensor& r_out) {
  const auto x = f64(in), w = f64(weight);
  const auto s = ratio(f64(r_out), zplus_z(layer, w, x), "block '" + layer.name + "'");
  const auto xp = x.clamp_min(0);
  auto r = xp * transpose(layer_map(layer, w.clamp_min(0)), x, s);
  // Negative inputs (a site without ReLU) contribute positively through negative weights.
  if (has_negative(x)) r = r + x.clamp_max(0) * transpose(layer_map(layer, w.clamp_max(0)), x, s);
  return r;
}

torch::Tensor zb_rule(const Block& layer, const torch::Tensor& weight, const torch::Tensor& in,
                      const torch::Tensor& low, const torch::Tensor& high,
                      const torch::Tensor& r_out) {
  const auto x = f64(in), w = f64(weight);
  if (low.numel() != x.size(1) || high.numel() != x.size(1))
    fail("z^B rule of block '", layer.name, "': ", low.numel(), " and ", high.numel(),
         " bounds for ", x.size(1), " input channels: expected one of each per channel");
  const auto lo = channel_bound(low, x), hi = channel_bound(high, x);
  const auto s = ratio(f64(r_out), zb_z(layer, w, x, lo, hi), "block '" + layer.name + "'");
  return x * transpose(layer_map(layer, w), x, s) -
         lo * transpose(layer_map(layer, w.clamp_min(0)), x, s) -
         hi * transpose(layer_map(layer, w.clamp_max(0)), x, s);
}

std::vector<torch::Tensor> addition_relevance(const std::vector<torch::Tensor>& in,
                                              const torch::Tensor& r_out) {
  if (in.empty()) fail("relevance through an addition of no inputs: expected at least one");
  // z+ with weights 1: each input's positive part is its contribution to the sum.
  torch::Tensor z;
  for (const auto& x : in) {
    if (!x.sizes().equals(in[0].sizes()))
      fail("relevance through an addition of inputs of shapes ", in[0].sizes(), " and ",
           x.sizes(), ": expected one shape");
    z = z.defined() ? z + f64(x).clamp_min(0) : f64(x).clamp_min(0);
  }
  const auto s = ratio(f64(r_out), z, "an addition");
  std::vector<torch::Tensor> r;
  for (const auto& x : in) r.push_back(f64(x).clamp_min(0) * s);
  return r;
}

torch::Tensor pool_relevance(const PoolSpec& pool, const torch::Tensor& in,
                             const torch::Tensor& r_out) {
  const auto x = f64(in), r = f64(r_out);
  switch (pool.kind) {
    case PoolKind::None: return r;
    case PoolKind::Max: {
      const auto [out, idx] =
          torch::max_pool2d_with_indices(x, {pool.kernel, pool.kernel}, {pool.stride, pool.stride},
                                         {pool.padding, pool.padding}, {1, 1}, pool.ceil_mode);
      if (!r.sizes().equals(out.sizes()))
        fail("relevance of shape ", r.sizes(), " does not fit max pooling output ", out.sizes());
      return torch::zeros({x.size(0), x.size(1), x.size(2) * x.size(3)}, x.options())
          .scatter_add_(2, idx.flatten(2), r.flatten(2))
          .view_as(x);
    }
    case PoolKind::Avg:
    case PoolKind::GlobalAvg: {
      const auto xp = x.clamp_min(0);
      const auto pooled = [&pool](const torch::Tensor& v) { return apply_pool(v, pool); };
      return xp * transpose(pooled, x, ratio(r, pooled(xp), "average pooling"));
    }
  }
  return r;
}

namespace {

/// The lowest and highest input codes a pixel can have, per channel.
std::pair<torch::Tensor, torch::Tensor> input_bounds(const QuantizedNetwork& q) {
  const int64_t c = q.network().input.c;
  auto code = [&](int pixel) {
    return q.quantize_input(torch::full({1, c, 1, 1}, pixel, torch::kUInt8)).view({c});
  };
  return {code(0), code(255)};
}

}  // namespace

InputRule resolve_input_rule(const QuantizedNetwork& q, InputRule r) {
  if (r != InputRule::Auto) return r;
  return input_bounds(q).first.min().item<double>() >= 0 ? InputRule::ZPlus : InputRule::ZB;
}

namespace {

/// The relevance each input of block b receives from the relevance r_out of its output.
std::vector<torch::Tensor> propagate_block(const QuantizedNetwork& q, int b,
                                           const std::vector<torch::Tensor>& in,
                                           const torch::Tensor& r_out, InputRule input_rule) {
  const Block& blk = q.network().blocks[b];
  const bool reads_input = blk.inputs[0] == Block::kNetworkInput;
  torch::Tensor low, high;  // per channel, for the z^B rule only
  if (reads_input && input_rule == InputRule::ZB) std::tie(low, high) = input_bounds(q);
  torch::Tensor w = blk.weighted() ? f64(q.weight_codes(b)) : torch::Tensor();
  // 1. The post pooling. Max pooling and a pooling behind a ReLU see the block's actual values.
  // Without a ReLU, a weighted layer and the linear pooling behind it form one linear layer, and
  // the pooling sees the layer's z+ (or z^B) contributions: the relevance then does not depend on
  // the order of a 1x1 convolution and a global average pooling (section V-E1).
  torch::Tensor r = r_out;
  if (blk.post.kind != PoolKind::None) {
    torch::Tensor a;
    if (blk.post.kind == PoolKind::Max || blk.activated() || !blk.weighted())
      a = q.before_post(b, in);
    else
      a = low.defined() ? zb_z(blk, w, f64(in[0]), channel_bound(low, in[0]),
                               channel_bound(high, in[0]))
                        : zplus_z(blk, w, f64(in[0]));
    r = pool_relevance(blk.post, a, r_out);
  }
  // 2. The ReLU and the clamp pass relevance unchanged, a saturated neuron too (docs/relevance.md).
  // 3. The block's operation.
  switch (blk.op) {
    case Op::Conv:
    case Op::Linear:
      if (low.defined()) return {zb_rule(blk, w, in[0], low, high, r)};
      return {zplus_rule(blk, w, in[0], r)};
    case Op::Pool: return {pool_relevance(blk.pool, in[0], r)};
    case Op::Concat: {
      std::vector<torch::Tensor> parts;
      int64_t offset = 0;
      for (const auto& x : in) {
        parts.push_back(r.slice(1, offset, offset + x.size(1)));
        offset += x.size(1);
      }
      return parts;
    }
    case Op::Add: {
      // The inputs at the common scale of the exact sum (QuantizedNetwork::input_format).
      const int frac = q.input_format(b).frac;
      std::vector<torch::Tensor> aligned;
      for (size_t k = 0; k < in.size(); ++k)
        aligned.push_back(f64(in[k]) *
                          std::ldexp(1.0, frac - q.format_of(blk.inputs[k]).frac));
      return addition_relevance(aligned, r);
    }
  }
  return {};
}

void add_to(torch::Tensor& acc, const torch::Tensor& r) { acc = acc.defined() ? acc + r : r; }

}  // namespace

Relevance relevance(const QuantizedNetwork& q, const torch::Tensor& input_codes,
                    const torch::Tensor& labels, InputRule input_rule) {
  const Network& net = q.network();
  const int nb = static_cast<int>(net.blocks.size());
  const int64_t n = input_codes.size(0);
  if (labels.dim() != 1 || labels.size(0) != n)
    fail("relevance of ", n, " images asked for with ", labels.numel(),
         " labels: expected one each");
  input_rule = resolve_input_rule(q, input_rule);
  std::vector<torch::Tensor> out;
  {
    torch::NoGradGuard no_grad;
    out = q.forward_all(input_codes);
  }
  const int64_t classes = out.back()[0].numel();
  if (n && (labels.min().item<int64_t>() < 0 || labels.max().item<int64_t>() >= classes))
    fail("labels span [", labels.min().item<int64_t>(), ", ", labels.max().item<int64_t>(),
         "]: expected class indices 0..", classes - 1);
  Relevance r;
  r.blocks.resize(nb);
  r.blocks[nb - 1] =
      torch::one_hot(labels.to(torch::kLong), classes).to(torch::kFloat64).view(out.back().sizes());
  r.input = torch::zeros(input_codes.sizes(), torch::kFloat64);
  for (int b = nb - 1; b >= 0; --b) {
    // Every reader of b comes later in topological order and has handed its share back.
    if (!r.blocks[b].defined()) r.blocks[b] = torch::zeros(out[b].sizes(), torch::kFloat64);
    std::vector<torch::Tensor> in;
    for (int j : net.blocks[b].inputs)
      in.push_back(j == Block::kNetworkInput ? input_codes : out[j]);
    const auto parts = propagate_block(q, b, in, r.blocks[b], input_rule);
    for (size_t k = 0; k < parts.size(); ++k) {
      const int j = net.blocks[b].inputs[k];
      add_to(j == Block::kNetworkInput ? r.input : r.blocks[j], parts[k]);
    }
  }
  return r;
}

MeanRelevance mean_relevance(const QuantizedNetwork& q, const torch::Tensor& images,
                             const torch::Tensor& labels, const RelevanceOptions& o) {
  const int64_t n = images.size(0);
  if (n == 0) fail("mean relevance (eq. 3) over an empty image set: expected at least one image");
  if (o.batch < 1) fail("relevance batch of ", o.batch, " images: expected at least 1");
  MeanRelevance m;
  m.images = n;
  // Relevance keeps a float64 tensor per block beside the forward pass: a quarter of the budget.
  const int64_t batch = q.network().batch_within(o.batch, int64_t{1} << 28);
  report(o.progress, "relevance", 0, n, "images");
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t e = std::min(n, s + batch);
    const Relevance r = relevance(q, q.quantize_input(images.slice(0, s, e)), labels.slice(0, s, e),
                                  o.input_rule);
    add_to(m.input, r.input.sum(0));
    m.blocks.resize(r.blocks.size());
    for (size_t b = 0; b < r.blocks.size(); ++b) add_to(m.blocks[b], r.blocks[b].sum(0));
    report(o.progress, "relevance", e, n, "images");
  }
  m.input = m.input / static_cast<double>(n);
  for (auto& t : m.blocks) t = t / static_cast<double>(n);
  return m;
}

}  // namespace flipguard
