#include <flipguard/error.hpp>
#include <flipguard/quant.hpp>

#include "rounding.hpp"

#include <cmath>
#include <limits>

namespace flipguard {

namespace {

constexpr double kFloat32ExactLimit = 16777216.0;  // 2^24: integers below are exact in float32

double pow2(int e) { return std::ldexp(1.0, e); }

int64_t pow2i(int e, const char* what) {
  if (e < 0 || e > 61) fail("fixed-point shift of ", e, " bits in ", what, ": expected 0..61");
  return int64_t{1} << e;
}

/// Rounds num / (D * 2^-t) = num * 2^t / D to the nearest integer, half up, exactly.
torch::Tensor rescale(const torch::Tensor& num, int t, int64_t divisor) {
  if (t >= 0) return round_div(num * pow2(t), divisor);
  return round_div(num, divisor * pow2i(-t, "requantization"));
}

/// Saturation into the range a reader accepts (a range restriction's, or the word's).
torch::Tensor saturate(const torch::Tensor& codes, const FixedPoint& f) {
  return codes.clamp(static_cast<double>(f.lo()), static_cast<double>(f.hi()));
}

double max_abs_code(const FixedPoint& f) {
  return static_cast<double>(std::max(-f.min_code(), f.max_code()));
}

/// Pooling on exact values: max pooling as is; average pooling as the exact window sum, with
/// its count multiplied into `divisor` for the one rounded division that follows.
torch::Tensor pool_exact(const torch::Tensor& num, const PoolSpec& p, int64_t& divisor) {
  switch (p.kind) {
    case PoolKind::None: return num;
    case PoolKind::Max: return apply_pool(num, p);
    case PoolKind::GlobalAvg:
      divisor *= num.size(2) * num.size(3);
      return num.sum({2, 3}, /*keepdim=*/true);
    case PoolKind::Avg:
      divisor *= int64_t{p.kernel} * p.kernel;
      return torch::avg_pool2d(num, {p.kernel, p.kernel}, {p.stride, p.stride},
                               {p.padding, p.padding}, false, true, /*divisor_override=*/1);
  }
  return num;
}

/// The pooling without padding and ceil_mode: on a window that already holds them.
PoolSpec unpadded(PoolSpec p) {
  p.padding = 0;
  p.ceil_mode = false;
  return p;
}

}  // namespace

torch::Tensor round_div(const torch::Tensor& x, int64_t d) {
  if (d <= 0) fail("rounded division by ", d, ": expected a positive divisor");
  if (d == 1) return x.to(torch::kFloat64);
  return round_half_up_div(x.to(torch::kLong), d).to(torch::kFloat64);
}

torch::Tensor requantize(const torch::Tensor& codes, int from, const FixedPoint& to) {
  return saturate(rescale(codes.to(torch::kFloat64), to.frac - from, 1), to);
}

torch::Tensor to_codes(const torch::Tensor& values, const FixedPoint& f) {
  auto v = values.to(torch::kFloat64) * pow2(f.frac);
  return saturate(torch::floor(v + 0.5), f);
}

torch::Tensor fake_quantize(const torch::Tensor& x, const FixedPoint& f) {
  const double step = f.step();
  const double lo = static_cast<double>(f.lo()) * step;
  const double hi = static_cast<double>(f.hi()) * step;
  torch::Tensor q, inside;
  {
    torch::NoGradGuard no_grad;
    q = (to_codes(x, f) * step).to(x.scalar_type());
    inside = (x >= lo).logical_and(x <= hi).to(x.scalar_type());
  }
  // Value exactly q (a - a is 0); gradient `inside` (q and inside carry none).
  const auto a = x * inside;
  return q + (a - a.detach());
}

FracSearch::FracSearch(int bits, bool is_signed, int min_frac, int max_frac)
    : bits_(bits), signed_(is_signed), min_frac_(min_frac), max_frac_(max_frac) {
  if (min_frac > max_frac)
    fail("fractional length search range [", min_frac, ", ", max_frac, "] is empty");
  sse_.assign(static_cast<size_t>(max_frac - min_frac + 1), 0.0);
}

void FracSearch::add(const torch::Tensor& values) {
  torch::NoGradGuard no_grad;
  auto v = values.detach().to(torch::kFloat32).flatten();
  if (v.numel() == 0) return;
  vmax_ = std::max(vmax_, v.abs().max().item<double>());
  vmin_ = std::min(vmin_, v.min().item<double>());
  for (int f = min_frac_; f <= max_frac_; ++f) {
    const FixedPoint fmt{bits_, f, signed_};
    sse_[static_cast<size_t>(f - min_frac_)] +=
        (to_codes(v, fmt).to(torch::kFloat32) * static_cast<float>(fmt.step()) - v)
            .square()
            .sum(torch::kFloat64)
            .item<double>();
  }
}

int FracSearch::best() const {
  if (vmax_ == 0.0) return bits_ - 1;  // a site that never fires (or no values): unit range
  int best_f = min_frac_;
  for (int f = min_frac_ + 1; f <= max_frac_; ++f)
    if (sse_[static_cast<size_t>(f - min_frac_)] < sse_[static_cast<size_t>(best_f - min_frac_)])
      best_f = f;
  return best_f;
}

int best_frac(const torch::Tensor& values, int bits, bool is_signed, int min_frac, int max_frac) {
  FracSearch s(bits, is_signed, min_frac, max_frac);
  s.add(values);
  return s.best();
}

namespace {

constexpr int64_t kCalibrationBatch = 250;

/// Images per calibration step: 250, fewer where the activations of 250 would not fit 1 GiB.
int64_t calibration_batch(const Network& net) { return net.batch_within(kCalibrationBatch); }

/// The float class scores of `images`, batch by batch, as output_error compares them.
std::vector<torch::Tensor> float_scores(const Network& net, const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  const int64_t batch = calibration_batch(net);
  for (int64_t s = 0; s < images.size(0); s += batch) {
    auto x = images.slice(0, s, std::min(images.size(0), s + batch));
    out.push_back(net.forward(net.preprocess(x)).to(torch::kFloat64));
  }
  return out;
}

double output_error(const Network& net, const QuantFormats& formats, const torch::Tensor& images,
                    const std::vector<torch::Tensor>& reference) {
  torch::NoGradGuard no_grad;
  const QuantizedNetwork qn(net, formats);
  double sum = 0;
  const int64_t batch = calibration_batch(net);
  for (size_t k = 0; k < reference.size(); ++k) {
    const int64_t s = static_cast<int64_t>(k) * batch;
    auto x = images.slice(0, s, std::min(images.size(0), s + batch));
    sum += (qn.scores(x) * qn.score_scale() - reference[k]).square().sum().item<double>();
  }
  return sum / std::max<int64_t>(1, images.size(0));
}

}  // namespace

double output_error(const Network& net, const QuantFormats& formats, const torch::Tensor& images) {
  return output_error(net, formats, images, float_scores(net, images));
}

namespace {

/// Greedy refinement of the per-tensor formats against the network's output error; the float
/// scores are computed once, only the fixed-point pass runs per candidate.
void refine_formats(const Network& net, QuantFormats& q, const torch::Tensor& images,
                    const ProgressFn& progress) {
  const std::vector<torch::Tensor> reference = float_scores(net, images);
  double best = output_error(net, q, images, reference);
  int total = 1 + static_cast<int>(net.sites().size()), done = 0;
  for (const Block& b : net.blocks) total += b.weighted();
  report(progress, "refinement", 0, total, "formats");
  auto try_moves = [&](FixedPoint& f) {
    for (int step : {-1, +1}) {
      bool improved = true;
      while (improved) {
        improved = false;
        f.frac += step;
        const double e = output_error(net, q, images, reference);
        if (e < best) {
          best = e;
          improved = true;
        } else {
          f.frac -= step;
        }
      }
    }
    report(progress, "refinement", ++done, total, "formats");
  };
  try_moves(q.input);
  for (int b : net.sites()) try_moves(q.act[b]);
  for (size_t b = 0; b < net.blocks.size(); ++b)
    if (net.blocks[b].weighted()) try_moves(q.weight[b]);
}

}  // namespace

QuantFormats calibrate(const Network& net, const torch::Tensor& images, const QuantOptions& o) {
  if (o.bits < 2 || o.bits > 16) fail("bits ", o.bits, ": expected 2..16");
  if (images.size(0) == 0) fail("calibration needs at least one image");
  torch::NoGradGuard no_grad;
  // The error of every candidate format is summed batch by batch, so memory does not grow with
  // the number of calibration images. The input's signedness follows from its values: both
  // searches run and the one that applies is kept.
  const size_t nb = net.blocks.size();
  FracSearch in_signed(o.bits, true, o.min_frac, o.max_frac),
      in_unsigned(o.bits, false, o.min_frac, o.max_frac);
  std::vector<FracSearch> acts(nb, FracSearch(o.bits, o.is_signed, o.min_frac, o.max_frac));
  const int64_t batch = calibration_batch(net), n = images.size(0);
  report(o.progress, "calibration", 0, n, "images");
  for (int64_t s = 0; s < n; s += batch) {
    auto x = net.preprocess(images.slice(0, s, std::min(n, s + batch)));
    in_signed.add(x);
    if (!o.is_signed) in_unsigned.add(x);
    auto out = net.forward_all(x);
    for (size_t b = 0; b < nb; ++b) acts[b].add(out[b]);
    report(o.progress, "calibration", std::min(n, s + batch), n, "images");
  }
  QuantFormats q;
  const bool input_signed = in_signed.min() < 0 || o.is_signed;
  q.input = {o.bits, (input_signed ? in_signed : in_unsigned).best(), input_signed};
  for (size_t b = 0; b < nb; ++b) {
    // The last block is no site: its class scores are read at accumulator precision and may be
    // negative even when every site is unsigned.
    const bool site = b + 1 < nb;
    if (!o.is_signed && site && acts[b].min() < 0)
      fail("cannot store site ", b, " ('", net.blocks[b].name, "') unsigned: it takes values down to ",
           acts[b].min(), "; expected non-negative values (a ReLU before it)");
    q.act.push_back({o.bits, acts[b].best(), o.is_signed});
    const Block& blk = net.blocks[b];
    q.weight.push_back(blk.weighted()
                           ? FixedPoint{o.bits, best_frac(blk.weight, o.bits, true, o.min_frac,
                                                          o.max_frac), true}
                           : FixedPoint{o.bits, 0, true});
  }
  if (o.refine) refine_formats(net, q, images, o.progress);
  return q;
}

QuantizedNetwork::QuantizedNetwork(const Network& net, const QuantFormats& q)
    : net_(net.clone()), q_(q) {
  net_.validate();
  const size_t nb = net_.blocks.size();
  if (q_.act.size() != nb || q_.weight.size() != nb)
    fail("quantization formats cover ", q_.act.size(), " blocks, the network has ", nb);
  if (q_.bias_bits < 2 || q_.bias_bits > 48) fail("bias width ", q_.bias_bits, ": expected 2..48");
  wcodes_.resize(nb);
  bcodes_.resize(nb);
  exact_in_float_.assign(nb, false);
  for (size_t b = 0; b < nb; ++b) {
    const Block& blk = net_.blocks[b];
    for (const PoolSpec* p : {&blk.pool, &blk.post})
      if (p->kind == PoolKind::Avg && p->ceil_mode)
        fail("block '", blk.name, "': average pooling with ceil_mode is not supported by the ",
             "fixed-point engine");
    check_clamp(static_cast<int>(b));
    if (!blk.weighted()) continue;
    const FixedPoint bias_fmt{q_.bias_bits, acc_frac(static_cast<int>(b)), true};
    bcodes_[b] = to_codes(blk.bias, bias_fmt);
    set_weight_codes(static_cast<int>(b), to_codes(blk.weight, q_.weight[b]));
  }
}

void QuantizedNetwork::check_clamp(int b) const {
  // Behind an average pooling, the clamped values are summed before the rounding: a bound must be
  // a whole number of units of the exact result for the clamp on integers to be exact.
  const Block& blk = net_.blocks[b];
  const bool averaged = blk.post.kind == PoolKind::Avg || blk.post.kind == PoolKind::GlobalAvg;
  if (!blk.clamps() || !averaged || b + 1 == static_cast<int>(net_.blocks.size())) return;
  int frac = blk.weighted() ? acc_frac(b) : blk.op == Op::Concat ? q_.act[b].frac : input_format(b).frac;
  double unit = pow2(frac);
  if (blk.op == Op::Pool && blk.pool.kind == PoolKind::Avg) unit *= double(blk.pool.kernel) * blk.pool.kernel;
  if (blk.op == Op::Pool && blk.pool.kind == PoolKind::GlobalAvg) {
    const int j = blk.inputs[0];
    const Shape in = j == Block::kNetworkInput ? net_.input : net_.shapes()[j];
    unit *= double(in.h) * in.w;
  }
  for (double bound : {blk.clamp_min, blk.clamp_max})
    if (std::isfinite(bound) && bound * unit != std::floor(bound * unit))
      fail("block '", blk.name, "': clamp bound ", bound, " is ", bound * unit,
           " units of its exact result before its average pooling; expected a whole number");
}

void QuantizedNetwork::set_weight_codes(int b, const torch::Tensor& codes) {
  if (b < 0 || b >= static_cast<int>(net_.blocks.size()) || !net_.blocks[b].weighted())
    fail("block ", b, " of ", net_.arch, " has no weights");
  const Block& blk = net_.blocks[b];
  if (!codes.sizes().equals(blk.weight.sizes()))
    fail("weight codes of block '", blk.name, "' have shape ", codes.sizes(), ", expected ",
         blk.weight.sizes());
  const FixedPoint& f = q_.weight[b];
  const auto lo = codes.min().item<double>(), hi = codes.max().item<double>();
  if (lo < f.min_code() || hi > f.max_code())
    fail("weight codes of block '", blk.name, "' span [", lo, ", ", hi, "], outside ", f.str(),
         "'s [", f.min_code(), ", ", f.max_code(), "]");
  wcodes_[b] = codes.to(torch::kFloat32).contiguous();
  // Float32 accumulation is exact while every partial sum stays below 2^24.
  const double wsum = wcodes_[b].abs().flatten(1).sum(1).max().item<double>();
  const double bound = max_abs_code(input_format(b)) * wsum;
  exact_in_float_[b] = bound < kFloat32ExactLimit;
}

FixedPoint QuantizedNetwork::input_format(int b) const {
  const Block& blk = net_.blocks[b];
  if (blk.op == Op::Concat) return q_.act[b];
  if (blk.op == Op::Add) {
    // The common format the inputs are aligned to: the finest fractional length among them, the
    // widest word that holds every input shifted to it.
    FixedPoint f = format_of(blk.inputs[0]);
    for (int j : blk.inputs) f.frac = std::max(f.frac, format_of(j).frac);
    // A signed word that holds every aligned input: an unsigned input needs one more bit.
    int bits = 0;
    for (int j : blk.inputs) {
      const FixedPoint in = format_of(j);
      bits = std::max(bits, in.bits + (in.is_signed ? 0 : 1) + f.frac - in.frac);
    }
    f.bits = bits;
    f.is_signed = true;
    f.restricted = false;
    return f;
  }
  const int j = blk.inputs[0];
  return j == Block::kNetworkInput ? q_.input : q_.act[j];
}

FixedPoint QuantizedNetwork::format_of(int j) const {
  return j == Block::kNetworkInput ? q_.input : q_.act.at(j);
}

int QuantizedNetwork::acc_frac(int b) const { return input_format(b).frac + q_.weight[b].frac; }

torch::Tensor QuantizedNetwork::quantize_input(const torch::Tensor& images) const {
  return to_codes(net_.preprocess(images), q_.input).to(torch::kFloat32);
}

torch::Tensor QuantizedNetwork::accumulator(int b, const torch::Tensor& in) const {
  return accumulate(b, in, true, {});
}

torch::Tensor QuantizedNetwork::accumulate(int b, const torch::Tensor& in, bool padded,
                                           ChannelRange ch) const {
  const Block& blk = net_.blocks.at(b);
  const int64_t pad = padded ? blk.padding : 0;
  if (!blk.weighted()) fail("block '", blk.name, "': it has no accumulator: it is not weighted");
  const torch::Tensor x = exact_in_float_[b] ? in.to(torch::kFloat32) : in.to(torch::kFloat64);
  torch::Tensor w = exact_in_float_[b] ? wcodes_[b] : wcodes_[b].to(torch::kFloat64);
  torch::Tensor bias = bcodes_[b];
  int64_t groups = blk.groups;
  if (ch.end >= 0) {
    // Output channels [begin, end): their weights, over the input channels of their groups.
    w = w.slice(0, ch.begin, ch.end);
    bias = bias.slice(0, ch.begin, ch.end);
    groups = blk.groups == 1 ? 1 : (ch.end - ch.begin) / (blk.out_channels / blk.groups);
  }
  if (blk.op == Op::Conv)
    return torch::conv2d(x, w, {}, {blk.stride, blk.stride}, {pad, pad},
                         {blk.dilation, blk.dilation}, groups)
               .to(torch::kFloat64) +
           bias.view({1, -1, 1, 1});
  return (torch::linear(x.flatten(1), w).to(torch::kFloat64) + bias.view({1, -1}))
      .view({in.size(0), -1, 1, 1});
}

ChannelRange QuantizedNetwork::check_channels(int b, ChannelRange ch) const {
  const Block& blk = net_.blocks.at(b);
  const int64_t n = net_.shapes()[b].c;
  if (ch.end < 0 || (ch.begin == 0 && ch.end == n)) return {};
  if (ch.begin < 0 || ch.begin >= ch.end || ch.end > n)
    fail("block '", blk.name, "': channels [", ch.begin, ", ", ch.end, ") outside its 0..", n - 1);
  if (blk.op == Op::Linear || blk.op == Op::Concat)
    fail("block '", blk.name, "': a range of channels is only computed for convolutions, ",
         "pooling and additions");
  const int64_t per_group = blk.op == Op::Conv ? blk.out_channels / blk.groups : 1;
  if (blk.groups > 1 && (ch.begin % per_group != 0 || ch.end % per_group != 0))
    fail("block '", blk.name, "': channels [", ch.begin, ", ", ch.end, ") split its groups of ",
         per_group, " channels");
  return ch;
}

torch::Tensor QuantizedNetwork::exact_before_post(int b, const std::vector<torch::Tensor>& in,
                                                int& frac, int64_t& divisor, bool padded,
                                                ChannelRange ch) const {
  const Block& blk = net_.blocks[b];
  // The block's result as numerator / divisor at fractional length `frac`, all exact.
  torch::Tensor num;
  frac = 0;
  divisor = 1;
  switch (blk.op) {
    case Op::Conv:
    case Op::Linear:
      num = accumulate(b, in[0], padded, ch);
      frac = acc_frac(b);
      break;
    case Op::Pool: {
      num = pool_exact(in[0].to(torch::kFloat64), padded ? blk.pool : unpadded(blk.pool), divisor);
      frac = input_format(b).frac;
      break;
    }
    case Op::Concat: {
      std::vector<torch::Tensor> parts;
      for (size_t k = 0; k < in.size(); ++k) {
        const int j = blk.inputs[k];
        const int from = j == Block::kNetworkInput ? q_.input.frac : q_.act[j].frac;
        parts.push_back(requantize(in[k], from, q_.act[b]));
      }
      num = torch::cat(parts, 1);
      frac = q_.act[b].frac;
      break;
    }
    case Op::Add: {
      // Every input shifted left, exactly, to the finest input format; the integer sum is
      // rounded and saturated into the site's format once, in forward_block (docs/quantization.md).
      frac = input_format(b).frac;
      for (size_t k = 0; k < in.size(); ++k) {
        const torch::Tensor aligned =
            in[k].to(torch::kFloat64) * pow2(frac - format_of(blk.inputs[k]).frac);
        num = k == 0 ? aligned : num + aligned;
      }
      break;
    }
  }
  // ReLU, a clamp and max pooling commute with the (monotonic) rounding below, so they act on
  // the exact value, as an accelerator applies them to its accumulator. A clamp bound that is
  // no whole number of units here (hardtanh(-0.3, 0.3)) is widened to the next whole numbers,
  // which keeps the numerators integers; clamp_codes then clamps the rounded codes to the
  // rounded bounds, which gives the rounded clamped value exactly.
  if (blk.relu) num = num.clamp_min(0.0);
  if (blk.clamps()) {
    const double unit = pow2(frac) * static_cast<double>(divisor);
    const bool last = b + 1 == static_cast<int>(net_.blocks.size());
    if (blk.clamp_min > -INFINITY) {
      const double lo = blk.clamp_min * unit;
      num = num.clamp_min(last ? lo : std::floor(lo));
    }
    if (blk.clamp_max < INFINITY) {
      const double hi = blk.clamp_max * unit;
      num = num.clamp_max(last ? hi : std::ceil(hi));
    }
  }
  return num;
}

torch::Tensor QuantizedNetwork::clamp_codes(int b, torch::Tensor codes) const {
  const Block& blk = net_.blocks[b];
  if (!blk.clamps()) return codes;
  // The bounds rounded half up into the site's format, as to_codes rounds a value.
  const int f = q_.act[b].frac;
  if (blk.clamp_min > -INFINITY) codes = codes.clamp_min(std::floor(std::ldexp(blk.clamp_min, f) + 0.5));
  if (blk.clamp_max < INFINITY) codes = codes.clamp_max(std::floor(std::ldexp(blk.clamp_max, f) + 0.5));
  return codes;
}

torch::Tensor QuantizedNetwork::before_post(int b, const std::vector<torch::Tensor>& in) const {
  int frac = 0;
  int64_t divisor = 1;
  return exact_before_post(b, in, frac, divisor);
}

torch::Tensor QuantizedNetwork::forward_block(int b, const std::vector<torch::Tensor>& in) const {
  const bool last = b + 1 == static_cast<int>(net_.blocks.size());
  int frac = 0;
  int64_t divisor = 1;
  torch::Tensor num =
      pool_exact(exact_before_post(b, in, frac, divisor), net_.blocks[b].post, divisor);
  if (last) return num;  // exact class scores, common scale 2^-frac / divisor
  return saturate(clamp_codes(b, rescale(num, q_.act[b].frac - frac, divisor)), q_.act[b])
      .to(torch::kFloat32);
}

torch::Tensor QuantizedNetwork::forward_window(int b, const std::vector<torch::Tensor>& in,
                                               const std::array<int64_t, 4>& post_pad,
                                               ChannelRange channels) const {
  const Block& blk = net_.blocks.at(b);
  if ((blk.op == Op::Pool && blk.pool.kind != PoolKind::Max) ||
      (blk.post.kind != PoolKind::None && blk.post.kind != PoolKind::Max &&
       b + 1 != static_cast<int>(net_.blocks.size())))
    fail("block '", blk.name, "': average pooling has no window form");
  int frac = 0;
  int64_t divisor = 1;
  torch::Tensor num =
      exact_before_post(b, in, frac, divisor, /*padded=*/false, check_channels(b, channels));
  if (b + 1 == static_cast<int>(net_.blocks.size())) return num;
  if (blk.post.kind == PoolKind::Max) {
    const auto& p = post_pad;
    if (p[0] || p[1] || p[2] || p[3])
      num = torch::constant_pad_nd(num, {p[2], p[3], p[0], p[1]},
                                   -std::numeric_limits<double>::infinity());
    num = pool_exact(num, unpadded(blk.post), divisor);
  }
  return saturate(clamp_codes(b, rescale(num, q_.act[b].frac - frac, divisor)), q_.act[b])
      .to(torch::kFloat32);
}

std::vector<torch::Tensor> QuantizedNetwork::forward_all(const torch::Tensor& x) const {
  std::vector<torch::Tensor> out;
  out.reserve(net_.blocks.size());
  for (size_t i = 0; i < net_.blocks.size(); ++i) {
    std::vector<torch::Tensor> in;
    for (int j : net_.blocks[i].inputs) in.push_back(j == Block::kNetworkInput ? x : out[j]);
    out.push_back(forward_block(static_cast<int>(i), in));
  }
  return out;
}

double QuantizedNetwork::score_scale() const {
  const int b = static_cast<int>(net_.blocks.size()) - 1;
  const Block& blk = net_.blocks[b];
  std::vector<Shape> before_post;
  const auto shapes = net_.shapes(&before_post);
  double divisor = 1;
  if (blk.op == Op::Pool) {
    const int j = blk.inputs[0];
    const Shape in = j == Block::kNetworkInput ? net_.input : shapes[j];
    if (blk.pool.kind == PoolKind::GlobalAvg) divisor *= double(in.h) * in.w;
    if (blk.pool.kind == PoolKind::Avg) divisor *= double(blk.pool.kernel) * blk.pool.kernel;
  }
  if (blk.post.kind == PoolKind::GlobalAvg) divisor *= double(before_post[b].h) * before_post[b].w;
  if (blk.post.kind == PoolKind::Avg) divisor *= double(blk.post.kernel) * blk.post.kernel;
  const int frac = blk.weighted() ? acc_frac(b) : input_format(b).frac;
  return std::ldexp(1.0, -frac) / divisor;
}

torch::Tensor QuantizedNetwork::scores(const torch::Tensor& images) const {
  torch::NoGradGuard no_grad;
  return forward_all(quantize_input(images)).back().flatten(1);
}

double QuantizedNetwork::accuracy(const torch::Tensor& images, const torch::Tensor& labels,
                                  int64_t batch) const {
  int64_t correct = 0;
  const int64_t n = images.size(0);
  batch = net_.batch_within(batch);
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t e = std::min(n, s + batch);
    correct += scores(images.slice(0, s, e)).argmax(1).eq(labels.slice(0, s, e)).sum().item<int64_t>();
  }
  return n ? static_cast<double>(correct) / n : 0.0;
}

}  // namespace flipguard
