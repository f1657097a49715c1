// The integer-exact fixed-point forward pass (section V-B), against an independent scalar
// reference written from the specification in quant.hpp: plain loops over int64_t, no torch
// arithmetic. Two correct engines give bit-identical codes, so every comparison is exact.
#include <flipguard/error.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/zoo.hpp>

#include "graph_fixtures.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace flipguard;

// ---------------------------------------------------------------------------------------------
// The scalar reference.
// ---------------------------------------------------------------------------------------------
namespace ref {

/// A feature map of exact integers: channels x height x width, row-major (as torch's NCHW).
struct Map {
  int64_t c = 0, h = 0, w = 0;
  std::vector<int64_t> v;
  Map() = default;
  Map(int64_t c_, int64_t h_, int64_t w_) : c(c_), h(h_), w(w_), v(c_ * h_ * w_, 0) {}
  int64_t& at(int64_t k, int64_t y, int64_t x) { return v[(k * h + y) * w + x]; }
  int64_t at(int64_t k, int64_t y, int64_t x) const { return v[(k * h + y) * w + x]; }
};

/// A block's exact result before requantization: element = num / divisor * 2^-frac, clamped to
/// the real bounds [lo, hi] (a clamp that to_site_format applies with the rounding).
struct Exact {
  Map num;
  int frac = 0;
  int64_t divisor = 1;
  double lo = -INFINITY, hi = INFINITY;
};

/// What the rounding did, so that a test can check it exercised ties and saturation.
struct Stats {
  int64_t rounded = 0;         ///< values requantized into a site's format
  int64_t ties = 0;            ///< ... that lay exactly halfway between two codes
  int64_t negative_ties = 0;   ///< ... of them, negative ones (round half up goes towards 0)
  int64_t saturated = 0;       ///< ... that fell outside the format and were clamped
  int64_t clamped = 0;         ///< values that a clamp (hardtanh, ReLU6) changed
  int64_t aligned = 0;         ///< inputs of additions shifted to a finer format
  Stats& operator+=(const Stats& o) {
    rounded += o.rounded;
    ties += o.ties;
    negative_ties += o.negative_ties;
    saturated += o.saturated;
    clamped += o.clamped;
    aligned += o.aligned;
    return *this;
  }
};

int64_t saturate(int64_t code, const FixedPoint& f, Stats* s = nullptr) {
  const int64_t c = std::clamp(code, f.min_code(), f.max_code());
  if (s && c != code) ++s->saturated;
  return c;
}

/// floor(a / b) for b > 0 (C++ division truncates towards zero).
int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

int64_t pow2(int e) {
  if (e < 0 || e > 40) throw std::runtime_error("reference: shift out of range");
  return int64_t{1} << e;
}

/// num * 2^shift / divisor rounded half up: with P/Q that fraction, floor(P/Q + 1/2) =
/// floor((2P + Q) / 2Q); a tie is 2P = Q (mod 2Q).
int64_t round_half_up(int64_t num, int shift, int64_t divisor, Stats* s = nullptr) {
  int64_t p = num, q = divisor;
  if (shift >= 0) {
    if (std::abs(num) > (int64_t{1} << 60) / pow2(shift)) throw std::runtime_error("overflow");
    p = num * pow2(shift);
  } else {
    q = divisor * pow2(-shift);
  }
  if (s) {
    ++s->rounded;
    const int64_t m = ((2 * p) % (2 * q) + 2 * q) % (2 * q);
    if (m == q) {
      ++s->ties;
      if (p < 0) ++s->negative_ties;
    }
  }
  return floor_div(2 * p + q, 2 * q);
}

/// A real value to a code: saturate(floor(x * 2^frac + 1/2)), in double.
int64_t code_of(double x, const FixedPoint& f) {
  const double r = std::floor(std::ldexp(x, f.frac) + 0.5);
  return static_cast<int64_t>(
      std::clamp(r, static_cast<double>(f.min_code()), static_cast<double>(f.max_code())));
}

std::vector<int64_t> codes_of(const torch::Tensor& t, const FixedPoint& f) {
  auto c = t.detach().to(torch::kFloat32).contiguous();
  const float* p = c.data_ptr<float>();
  std::vector<int64_t> out(c.numel());
  for (size_t i = 0; i < out.size(); ++i) out[i] = code_of(p[i], f);
  return out;
}

/// Convolution of codes, exact: sum(code_in * code_w) + bias, zero padding, stride, dilation;
/// with groups, output channel o reads only the input channels of its group.
Map conv(const Map& in, const Block& b, const std::vector<int64_t>& w,
         const std::vector<int64_t>& bias) {
  const int64_t k = b.kernel, eff = b.dilation * (k - 1) + 1;
  Map out(b.out_channels, (in.h + 2 * b.padding - eff) / b.stride + 1,
          (in.w + 2 * b.padding - eff) / b.stride + 1);
  const int64_t in_group = in.c / b.groups, out_group = out.c / b.groups;
  for (int64_t o = 0; o < out.c; ++o)
    for (int64_t y = 0; y < out.h; ++y)
      for (int64_t x = 0; x < out.w; ++x) {
        int64_t acc = bias[o];
        for (int64_t cl = 0; cl < in_group; ++cl)
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) {
              const int64_t c = o / out_group * in_group + cl;
              const int64_t iy = y * b.stride - b.padding + i * b.dilation;
              const int64_t ix = x * b.stride - b.padding + j * b.dilation;
              if (iy < 0 || iy >= in.h || ix < 0 || ix >= in.w) continue;  // zero padding
              acc += in.at(c, iy, ix) * w[((o * in_group + cl) * k + i) * k + j];
            }
        out.at(o, y, x) = acc;
      }
  return out;
}

/// Fully-connected layer on the flattened (C, H, W) input.
Map linear(const Map& in, const Block& b, const std::vector<int64_t>& w,
           const std::vector<int64_t>& bias) {
  const int64_t n = static_cast<int64_t>(in.v.size());
  Map out(b.out_channels, 1, 1);
  for (int64_t o = 0; o < out.c; ++o) {
    int64_t acc = bias[o];
    for (int64_t i = 0; i < n; ++i) acc += in.v[i] * w[o * n + i];
    out.v[o] = acc;
  }
  return out;
}

int64_t pooled_extent(int64_t n, const PoolSpec& p) {
  if (p.ceil_mode) throw std::runtime_error("reference: ceil_mode pooling not implemented");
  return (n + 2 * p.padding - p.kernel) / p.stride + 1;
}

/// Max (or, with `sum`, the sum with padding counted as zeros) over each pooling window.
Map window_pool(const Map& in, const PoolSpec& p, bool sum) {
  Map out(in.c, pooled_extent(in.h, p), pooled_extent(in.w, p));
  for (int64_t c = 0; c < in.c; ++c)
    for (int64_t y = 0; y < out.h; ++y)
      for (int64_t x = 0; x < out.w; ++x) {
        int64_t acc = 0;
        bool first = true;
        for (int64_t i = 0; i < p.kernel; ++i)
          for (int64_t j = 0; j < p.kernel; ++j) {
            const int64_t iy = y * p.stride - p.padding + i, ix = x * p.stride - p.padding + j;
            if (iy < 0 || iy >= in.h || ix < 0 || ix >= in.w) continue;
            const int64_t v = in.at(c, iy, ix);
            acc = sum ? acc + v : (first ? v : std::max(acc, v));
            first = false;
          }
        out.at(c, y, x) = acc;
      }
  return out;
}

Map global_sum(const Map& in) {
  Map out(in.c, 1, 1);
  for (int64_t c = 0; c < in.c; ++c)
    for (int64_t i = 0; i < in.h * in.w; ++i) out.v[c] += in.v[c * in.h * in.w + i];
  return out;
}

/// Pooling on an exact value: max keeps the scale, sums multiply the divisor.
void pool(Exact& e, const PoolSpec& p) {
  switch (p.kind) {
    case PoolKind::None: break;
    case PoolKind::Max: e.num = window_pool(e.num, p, false); break;
    case PoolKind::Avg:
      e.num = window_pool(e.num, p, true);
      e.divisor *= int64_t{p.kernel} * p.kernel;
      break;
    case PoolKind::GlobalAvg:
      e.divisor *= e.num.h * e.num.w;
      e.num = global_sum(e.num);
      break;
  }
}

/// A real clamp bound rounded half up into format `to` (not saturated).
int64_t bound_code(double bound, const FixedPoint& to) {
  return static_cast<int64_t>(std::floor(std::ldexp(bound, to.frac) + 0.5));
}

/// Every element of an exact value into format `to`: round half up, then saturate. A value
/// beyond the clamp bounds is the bound, rounded the same way.
Map to_site_format(const Exact& e, const FixedPoint& to, Stats* s) {
  Map out = e.num;
  const double unit = std::ldexp(1.0, e.frac) * static_cast<double>(e.divisor);
  for (int64_t& v : out.v) {
    const double x = static_cast<double>(v);
    int64_t code;
    if (x < e.lo * unit || x > e.hi * unit) {
      code = bound_code(x < e.lo * unit ? e.lo : e.hi, to);
      if (s) ++s->clamped;
    } else {
      code = round_half_up(v, to.frac - e.frac, e.divisor, s);
    }
    v = saturate(code, to, s);
  }
  return out;
}

/// The clamp of `blk` on the numerators themselves (before an average pooling, or in the class
/// scores): the bounds must be whole numbers of units there.
void clamp_numerators(Exact& e, const Block& blk, Stats* s) {
  const double unit = std::ldexp(1.0, e.frac) * static_cast<double>(e.divisor);
  const double lo = blk.clamp_min * unit, hi = blk.clamp_max * unit;
  if ((std::isfinite(lo) && lo != std::floor(lo)) || (std::isfinite(hi) && hi != std::floor(hi)))
    throw std::runtime_error("reference: clamp bound between two numerators");
  for (int64_t& v : e.num.v) {
    const double x = static_cast<double>(v);
    if (x < lo || x > hi) {
      v = static_cast<int64_t>(x < lo ? lo : hi);
      if (s) ++s->clamped;
    }
  }
}

/// Input codes of image n of the pre-processed batch x (N x C x H x W, float32).
Map input_codes(const torch::Tensor& x, int64_t n, const FixedPoint& f) {
  Map m(x.size(1), x.size(2), x.size(3));
  m.v = codes_of(x[n], f);
  return m;
}

/// The format of block j's output (j = -1: the network input).
FixedPoint format_of(const QuantFormats& q, int j) {
  return j == Block::kNetworkInput ? q.input : q.act[j];
}

/// Accumulator fractional length of weighted block b: f_in + f_w.
int acc_frac(const Network& net, const QuantFormats& q, size_t b) {
  return format_of(q, net.blocks[b].inputs[0]).frac + q.weight[b].frac;
}

std::vector<int64_t> weight_codes(const Network& net, const QuantFormats& q, size_t b) {
  return codes_of(net.blocks[b].weight, q.weight[b]);
}

/// Biases at the accumulator's scale, saturated to bias_bits.
std::vector<int64_t> bias_codes(const Network& net, const QuantFormats& q, size_t b) {
  return codes_of(net.blocks[b].bias, FixedPoint{q.bias_bits, acc_frac(net, q, b), true});
}

/// The quantized forward pass of one image: the codes of every site, and for the last block
/// its exact numerators.
std::vector<Map> forward(const Network& net, const QuantFormats& q, const Map& input,
                         Stats* s) {
  std::vector<Map> out;
  auto map_of = [&](int j) -> const Map& { return j == Block::kNetworkInput ? input : out[j]; };
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    const Block& blk = net.blocks[b];
    const int j0 = blk.inputs[0];
    Exact e;
    switch (blk.op) {
      case Op::Conv:
        e = {conv(map_of(j0), blk, weight_codes(net, q, b), bias_codes(net, q, b)),
             acc_frac(net, q, b), 1};
        break;
      case Op::Linear:
        e = {linear(map_of(j0), blk, weight_codes(net, q, b), bias_codes(net, q, b)),
             acc_frac(net, q, b), 1};
        break;
      case Op::Pool:
        e = {map_of(j0), format_of(q, j0).frac, 1};
        pool(e, blk.pool);
        break;
      case Op::Add: {
        // Aligned exactly to the finest input format, then summed.
        e.frac = std::numeric_limits<int>::min();
        for (int j : blk.inputs) e.frac = std::max(e.frac, format_of(q, j).frac);
        const Map& first = map_of(j0);
        e.num = Map(first.c, first.h, first.w);
        for (int j : blk.inputs) {
          const int64_t scale = pow2(e.frac - format_of(q, j).frac);
          if (s && scale > 1) ++s->aligned;
          for (size_t i = 0; i < e.num.v.size(); ++i) e.num.v[i] += map_of(j).v[i] * scale;
        }
        break;
      }
      case Op::Concat: {
        e.frac = q.act[b].frac;
        for (int j : blk.inputs) {
          const Map part = to_site_format({map_of(j), format_of(q, j).frac, 1}, q.act[b], s);
          e.num.c += part.c;
          e.num.h = part.h;
          e.num.w = part.w;
          e.num.v.insert(e.num.v.end(), part.v.begin(), part.v.end());  // channels follow
        }
        break;
      }
    }
    if (blk.relu)
      for (int64_t& v : e.num.v) v = std::max<int64_t>(0, v);
    const bool last = b + 1 == net.blocks.size();
    // A clamp commutes with max pooling and the rounding (all monotone): it is applied with the
    // rounding, on the real value. Before an average pooling, or on the class scores, it acts
    // on the numerators.
    const bool averaged = blk.post.kind == PoolKind::Avg || blk.post.kind == PoolKind::GlobalAvg;
    if (blk.clamps() && (last || averaged)) {
      clamp_numerators(e, blk, s);
    } else {
      e.lo = blk.clamp_min;
      e.hi = blk.clamp_max;
    }
    pool(e, blk.post);
    out.push_back(last ? e.num : to_site_format(e, q.act[b], s));
  }
  return out;
}

}  // namespace ref

// ---------------------------------------------------------------------------------------------
// Comparing the engine with the reference.
// ---------------------------------------------------------------------------------------------
namespace {

torch::Generator generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

torch::Tensor random_images(const Shape& s, int64_t n, uint64_t seed) {
  auto gen = generator(seed);
  return torch::randint(0, 256, {n, s.c, s.h, s.w}, gen, torch::kLong).to(torch::kUInt8);
}

std::string seed_trace(uint64_t seed) {
  return "seed " + std::to_string(seed) + " reproduces this";
}

/// Image n of an engine tensor (N x C x H x W, or N x C for vectors) equals `expected`,
/// element by element, exactly.
::testing::AssertionResult same_values(const torch::Tensor& engine, int64_t n,
                                       const ref::Map& expected, const std::string& what) {
  auto t = engine[n].to(torch::kFloat64).contiguous().flatten();
  if (t.numel() != static_cast<int64_t>(expected.v.size()))
    return ::testing::AssertionFailure() << what << ": engine has " << t.numel()
                                         << " elements, reference " << expected.v.size();
  const double* a = t.data_ptr<double>();
  std::ostringstream msg;
  int64_t bad = 0;
  for (size_t i = 0; i < expected.v.size(); ++i) {
    if (a[i] == static_cast<double>(expected.v[i])) continue;
    if (++bad <= 5) {
      const int64_t hw = expected.h * expected.w;
      msg << "\n  image " << n << " (c " << i / hw << ", y " << (i % hw) / expected.w << ", x "
          << i % expected.w << "): engine " << a[i] << ", reference " << expected.v[i];
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << expected.v.size()
                                       << " elements differ" << msg.str();
}

/// Runs the engine and the reference on `images` and requires identical input codes, weight
/// and bias codes, site codes and class-score numerators, and the same predicted class.
/// Returns the reference's rounding statistics.
ref::Stats expect_engine_matches_reference(const Network& net, const QuantFormats& q,
                                           const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  const QuantizedNetwork qn(net, q);
  ref::Stats stats;
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    const Block& blk = net.blocks[b];
    if (!blk.weighted()) continue;
    ref::Map w(1, 1, blk.weight.numel()), bias(1, 1, blk.bias.numel());
    w.v = ref::weight_codes(net, q, b);
    bias.v = ref::bias_codes(net, q, b);
    EXPECT_TRUE(same_values(qn.weight_codes(b).flatten().unsqueeze(0), 0, w, "weights " + blk.name));
    EXPECT_TRUE(same_values(qn.bias_codes(b).unsqueeze(0), 0, bias, "bias " + blk.name));
  }
  const auto x = net.preprocess(images);
  const auto input = qn.quantize_input(images);
  const auto out = qn.forward_all(input);
  const auto predicted = qn.scores(images).argmax(1);
  for (int64_t n = 0; n < images.size(0); ++n) {
    const ref::Map in = ref::input_codes(x, n, q.input);
    EXPECT_TRUE(same_values(input, n, in, "input codes"));
    const auto expected = ref::forward(net, q, in, &stats);
    for (size_t b = 0; b < net.blocks.size(); ++b)
      EXPECT_TRUE(same_values(out[b], n, expected[b],
                              "block " + std::to_string(b) + " '" + net.blocks[b].name + "'"));
    // The predicted class has the largest exact score (robust to ties between classes).
    const auto& scores = expected.back().v;
    const int64_t best = *std::max_element(scores.begin(), scores.end());
    EXPECT_EQ(scores[predicted[n].item<int64_t>()], best) << "image " << n;
  }
  return stats;
}

// ---------------------------------------------------------------------------------------------
// A tiny network with every kind of block and the options the zoo does not use.
// ---------------------------------------------------------------------------------------------

Block weighted(const std::string& name, Op op, int input, int64_t in_features, int64_t out,
               int kernel, torch::Generator& gen) {
  Block b;
  b.name = name;
  b.op = op;
  b.inputs = {input};
  b.out_channels = out;
  b.kernel = kernel;
  b.weight = op == Op::Conv ? torch::empty({out, in_features, kernel, kernel})
                            : torch::empty({out, in_features});
  b.weight.uniform_(-1.0, 1.0, gen);
  b.bias = torch::empty({out}).uniform_(-0.5, 0.5, gen);
  return b;
}

/// 2x16x16 input ->
///   0 conv0   3x3 pad 1, ReLU, max pool 2x2          4x8x8
///   1 conv1   3x3 stride 2 dilation 2 pad 2           6x4x4   (read by 2 and 3: a branch)
///   2 conv2a  1x1 on 1, average pool 3x3 s1 pad 1     3x4x4
///   3 conv2b  3x3 pad 1 on 1, ReLU                    2x4x4
///   4 cat     concatenation of 2 and 3                5x4x4
///   5 gap     global average pooling                  5x1x1
///   6 fc      linear                                  4x1x1
///   7 scores  linear (last block)                     3x1x1
/// With `relu_everywhere` every weighted site has a ReLU, so that all sites can be unsigned;
/// otherwise conv1, conv2a and fc produce signed values.
Network tiny_net(uint64_t seed, bool relu_everywhere) {
  auto gen = generator(seed);
  Network net;
  net.arch = "tiny";
  net.input = {2, 16, 16};
  net.input_mean = {0.5, 0.25};
  net.input_std = {0.25, 0.5};
  Block b0 = weighted("conv0", Op::Conv, Block::kNetworkInput, 2, 4, 3, gen);
  b0.padding = 1;
  b0.relu = true;
  b0.post = PoolSpec::max(2, 2);
  Block b1 = weighted("conv1", Op::Conv, 0, 4, 6, 3, gen);
  b1.stride = 2;
  b1.dilation = 2;
  b1.padding = 2;
  b1.relu = relu_everywhere;
  Block b2 = weighted("conv2a", Op::Conv, 1, 6, 3, 1, gen);
  b2.relu = relu_everywhere;
  b2.post = {PoolKind::Avg, 3, 1, 1, false};
  Block b3 = weighted("conv2b", Op::Conv, 1, 6, 2, 3, gen);
  b3.padding = 1;
  b3.relu = true;
  Block b4;
  b4.name = "cat";
  b4.op = Op::Concat;
  b4.inputs = {2, 3};
  Block b5;
  b5.name = "gap";
  b5.op = Op::Pool;
  b5.inputs = {4};
  b5.pool = PoolSpec::global_avg();
  Block b6 = weighted("fc", Op::Linear, 5, 5, 4, 1, gen);
  b6.relu = relu_everywhere;
  Block b7 = weighted("scores", Op::Linear, 6, 4, 3, 1, gen);
  net.blocks = {b0, b1, b2, b3, b4, b5, b6, b7};
  net.validate();
  return net;
}

/// Hand-picked formats of the tiny network: fractional lengths of the input, of each block's
/// output and of each block's weights (0 for unweighted blocks).
struct TinyCase {
  std::string name;
  int bits;
  bool is_signed;
  int bias_bits;
  int input_frac;
  std::vector<int> act_frac, weight_frac;
};

void PrintTo(const TinyCase& c, std::ostream* os) { *os << c.name; }

QuantFormats formats_of(const TinyCase& c) {
  QuantFormats q;
  q.bias_bits = c.bias_bits;
  q.input = {c.bits, c.input_frac, true};  // the pre-processed input takes negative values
  for (size_t b = 0; b < c.act_frac.size(); ++b) {
    q.act.push_back({c.bits, c.act_frac[b], c.is_signed});
    q.weight.push_back({c.bits, c.weight_frac[b], true});
  }
  return q;
}

/// Sets the first two weights and biases of every weighted block exactly halfway between two
/// codes (+-1.5 and +-2.5 LSB), so that rounding ties of weights and biases are exercised.
void plant_ties(Network& net, const QuantFormats& q) {
  for (size_t b = 0; b < net.blocks.size(); ++b) {
    Block& blk = net.blocks[b];
    if (!blk.weighted()) continue;
    const int f_acc = ref::acc_frac(net, q, b);
    auto w = blk.weight.view({-1});
    w[0] = std::ldexp(1.5, -q.weight[b].frac);
    w[1] = std::ldexp(-1.5, -q.weight[b].frac);
    blk.bias[0] = std::ldexp(2.5, -f_acc);
    blk.bias[1] = std::ldexp(-2.5, -f_acc);
  }
}

/// The engine against the reference on the networks `make(seed)` for seeds 1 to 3, with the
/// case's formats and planted ties, on 4 images each (seed + image_seed); returns the rounding
/// statistics, also recorded as the test's properties.
template <class Make>
ref::Stats tiny_case_stats(const TinyCase& c, Make make, uint64_t image_seed) {
  const QuantFormats q = formats_of(c);
  ref::Stats total;
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE(seed_trace(seed));
    Network net = make(seed);
    plant_ties(net, q);
    total += expect_engine_matches_reference(net, q, random_images(net.input, 4, seed + image_seed));
  }
  ::testing::Test::RecordProperty("ties", std::to_string(total.ties));
  ::testing::Test::RecordProperty("saturated", std::to_string(total.saturated));
  ::testing::Test::RecordProperty("clamped", std::to_string(total.clamped));
  return total;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. The tiny network with hand-picked formats.
// ---------------------------------------------------------------------------------------------

class TinyNetwork : public ::testing::TestWithParam<TinyCase> {};

// Every site's codes and the exact class scores equal the reference's, on several random
// networks and images, and the formats really made values round to ties and saturate.
TEST_P(TinyNetwork, EngineMatchesScalarReferenceExactly) {
  const TinyCase& c = GetParam();
  const ref::Stats total =
      tiny_case_stats(c, [&](uint64_t seed) { return tiny_net(seed, !c.is_signed); }, 100);
  EXPECT_GT(total.ties, 0) << "the formats should produce rounding ties";
  if (c.is_signed) {
    EXPECT_GT(total.negative_ties, 0) << "and negative ones";
  }
  EXPECT_GT(total.saturated, 0) << "the formats should saturate some values";
  EXPECT_LT(total.saturated, total.rounded / 4) << "but not most of them";
}

// The formats follow the float ranges of the tiny network, one step too tight in places so that
// some values saturate (signed: conv0 [0, 8], conv1 and conv2a about +-20, conv2b [0, 60], gap
// [-8, 24], fc +-28; with ReLUs everywhere: conv1 [0, 21], conv2a [0, 7.5], conv2b [0, 44], gap
// [0, 11], fc [0, 5]); the input's x = 2 saturates (at f = 6: 1.98; at f = 2: 1.75). Weight
// formats are coarse, so that f_out is mostly only 1 to 4 bits below f_acc and ties are frequent;
// conv2b's weights saturate (above 0.5 at s8.8, above 0.875 at s4.3). conv2b is one bit coarser
// than the concatenation (an up-shift that saturates), conv2a one or two bits finer (a
// down-shift with ties). The 4-bit activation formats hold the 8-bit ranges, 4 bits coarser.
// Act fracs, blocks:               conv0 conv1 conv2a conv2b cat gap fc (scores: unused)
INSTANTIATE_TEST_SUITE_P(
    HandPickedFormats, TinyNetwork,
    ::testing::Values(
        TinyCase{"s8", 8, true, 32, 6, {4, 3, 3, 1, 2, 3, 3, 0}, {2, 3, 2, 8, 0, 0, 2, 3}},
        TinyCase{"u8", 8, false, 8, 6, {5, 4, 5, 2, 3, 4, 6, 0}, {2, 3, 2, 8, 0, 0, 2, 3}},
        TinyCase{"s4", 4, true, 4, 2, {0, -1, -1, -3, -2, -1, -1, 0}, {2, 2, 2, 3, 0, 0, 2, 2}},
        TinyCase{"u4", 4, false, 16, 2, {1, 0, 1, -2, -1, 0, 2, 0}, {2, 2, 2, 3, 0, 0, 2, 2}},
        // 16 bits: accumulators far beyond 2^24, the engine's float64 path.
        TinyCase{"s16", 16, true, 40, 14, {12, 11, 11, 9, 10, 11, 11, 0},
                 {10, 11, 10, 16, 0, 0, 10, 11}}),
    [](const auto& info) { return info.param.name; });

namespace {

/// Pooling blocks on their own, reading the network input: 3x9x9 ->
///   0 avg     average pool 3x3 stride 2 pad 1        3x5x5
///   1 max     max pool 3x3 stride 2 pad 1            3x3x3
///   2 gap     global average pooling (last block)    3x1x1
Network pooling_net(double mean) {
  Network net;
  net.arch = "pools";
  net.input = {3, 9, 9};
  net.input_mean = {mean, mean, mean};
  net.input_std = {0.5, 0.5, 0.5};
  Block avg, max, gap;
  avg.name = "avg";
  avg.op = Op::Pool;
  avg.pool = {PoolKind::Avg, 3, 2, 1, false};
  max.name = "max";
  max.op = Op::Pool;
  max.inputs = {0};
  max.pool = {PoolKind::Max, 3, 2, 1, false};
  gap.name = "gap";
  gap.op = Op::Pool;
  gap.inputs = {1};
  gap.pool = PoolSpec::global_avg();
  net.blocks = {avg, max, gap};
  net.validate();
  return net;
}

}  // namespace

// Op::Pool blocks (average with padding, max with padding, global average) work on their input
// codes at f_acc = f_in, with mixed word lengths: the 4-bit max site saturates.
TEST(PoolingBlocks, EngineMatchesScalarReferenceExactly) {
  for (bool is_signed : {true, false}) {
    // Signed: x in [-1, 1]; unsigned: x in [0.5, 2.5].
    const Network net = pooling_net(is_signed ? 0.5 : -0.25);
    QuantFormats q;
    // avg: shift -1, divisor 9; max: shift -1 (signed) or -2 into 4 bits that hold [-0.5, 0.44]
    // or [0, 1.88], a little below the largest averages.
    q.input = {8, 6, is_signed};
    q.act = {{8, 5, is_signed}, {4, is_signed ? 4 : 3, is_signed}, {8, 0, is_signed}};
    q.weight = {{8, 0, true}, {8, 0, true}, {8, 0, true}};
    ref::Stats total;
    for (uint64_t seed : {21, 22, 23}) {
      SCOPED_TRACE(seed_trace(seed));
      total += expect_engine_matches_reference(net, q, random_images(net.input, 4, seed));
    }
    SCOPED_TRACE(is_signed ? "signed" : "unsigned");
    EXPECT_GT(total.ties, 0);
    EXPECT_GT(total.saturated, 0);
    EXPECT_LT(total.saturated, total.rounded / 4);
  }
}

namespace {

/// Additions, grouped convolutions and clamps: 2x8x8 input ->
///   0 conv0  3x3 pad 1, ReLU6                                  4x8x8
///   1 dw     depthwise 3x3 pad 1, hardtanh(-4.3, 6.5)          4x8x8
///   2 gconv  1x1 in 2 groups, no activation                    4x8x8
///   3 add    0 + 1 + 2, ReLU, clamp at 7.7, max pool 2x2       4x4x4
///   4 gconv2 3x3 pad 1 in 2 groups to 6, hardtanh(-9, 11.5),
///            average pool 3x3 s1 pad 1                         6x4x4
///   5 add2   4 + 4 (a site read twice by one addition)         6x4x4
///   6 gap    global average pooling                            6x1x1
///   7 fc     linear (last block)                               3x1x1
/// -4.3, 6.5 and 7.7 are no whole number of units of the sites' formats: the clamp in codes
/// rounds them.
Network tiny_graph(uint64_t seed) {
  auto gen = generator(seed);
  Network net;
  net.arch = "tiny-graph";
  net.input = {2, 8, 8};
  net.input_mean = {0.5, 0.25};
  net.input_std = {0.25, 0.5};
  auto conv = [&](const std::string& name, int input, int64_t in, int64_t out, int kernel,
                  int groups) {
    Block b = weighted(name, Op::Conv, input, in / groups, out, kernel, gen);
    b.padding = kernel / 2;
    b.groups = groups;
    return b;
  };
  Block b0 = conv("conv0", Block::kNetworkInput, 2, 4, 3, 1);
  b0.relu = true;
  b0.clamp_max = 6;
  Block b1 = conv("dw", 0, 4, 4, 3, 4);
  b1.clamp_min = -4.3;
  b1.clamp_max = 6.5;
  Block b2 = conv("gconv", 1, 4, 4, 1, 2);
  Block b3;
  b3.name = "add";
  b3.op = Op::Add;
  b3.inputs = {0, 1, 2};
  b3.relu = true;
  b3.clamp_max = 7.7;
  b3.post = PoolSpec::max(2, 2);
  Block b4 = conv("gconv2", 3, 4, 6, 3, 2);
  b4.clamp_min = -9;
  b4.clamp_max = 11.5;
  b4.post = {PoolKind::Avg, 3, 1, 1, false};
  Block b5;
  b5.name = "add2";
  b5.op = Op::Add;
  b5.inputs = {4, 4};
  Block b6;
  b6.name = "gap";
  b6.op = Op::Pool;
  b6.inputs = {5};
  b6.pool = PoolSpec::global_avg();
  Block b7 = weighted("fc", Op::Linear, 6, 6, 3, 1, gen);
  net.blocks = {b0, b1, b2, b3, b4, b5, b6, b7};
  net.validate();
  return net;
}

}  // namespace

class TinyGraph : public ::testing::TestWithParam<TinyCase> {};

// Additions of sites of different formats, grouped and depthwise convolutions and clamps: every
// site's codes and the exact class scores equal the reference's, and the formats made values
// round to ties, saturate, get clamped and get aligned.
TEST_P(TinyGraph, EngineMatchesScalarReferenceExactly) {
  const ref::Stats total = tiny_case_stats(GetParam(), tiny_graph, 200);
  EXPECT_GT(total.ties, 0) << "the formats should produce rounding ties";
  EXPECT_GT(total.negative_ties, 0) << "and negative ones";
  EXPECT_GT(total.saturated, 0) << "the formats should saturate some values";
  EXPECT_LT(total.saturated, total.rounded / 4) << "but not most of them";
  EXPECT_GT(total.clamped, 0) << "the clamps should act";
  EXPECT_LT(total.clamped, total.rounded / 4) << "but not on most values";
  EXPECT_GT(total.aligned, 0) << "additions should read inputs of different formats";
}

// Formats (float ranges of the three seeds' networks): conv0 [0, 6] at f = 4; dw [-4.3, 6.5] at
// f = 4; gconv about +-9 at f = 5, which saturates at 4; the addition sums f = 4, 4, 5 at F = 5
// and rounds into f = 4; gconv2 [-9, 11.5] averaged at f = 3; add2 about +-23 at f = 2 (the
// same site twice, aligned to 3, summed, down-shifted by 1 with ties); gap +-14 at f = 3. The
// 4-bit formats hold the same ranges 4 bits coarser, the 16-bit ones 8 bits finer.
// Act fracs, blocks:               conv0 dw gconv add gconv2 add2 gap (fc: unused)
INSTANTIATE_TEST_SUITE_P(
    HandPickedFormats, TinyGraph,
    ::testing::Values(
        TinyCase{"s8", 8, true, 32, 6, {4, 4, 5, 4, 3, 2, 3, 0}, {2, 3, 3, 0, 3, 0, 0, 3}},
        TinyCase{"s4", 4, true, 8, 2, {0, 0, 1, 0, -1, -2, -1, 0}, {2, 2, 2, 0, 2, 0, 0, 2}},
        TinyCase{"s16", 16, true, 40, 14, {12, 12, 13, 12, 11, 10, 11, 0},
                 {10, 11, 11, 0, 11, 0, 0, 11}}),
    [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// 2. The zoo networks with calibrated formats.
// ---------------------------------------------------------------------------------------------

struct ZooCase {
  std::string arch;
  int bits;
  bool is_signed;
  int64_t images;
  uint64_t seed;
};

void PrintTo(const ZooCase& c, std::ostream* os) {
  *os << c.arch << (c.is_signed ? " signed " : " unsigned ") << c.bits << " bits, seed " << c.seed;
}

class ZooNetwork : public ::testing::TestWithParam<ZooCase> {};

// Random weights, formats from `calibrate` on a few random images, compared on other images.
TEST_P(ZooNetwork, EngineMatchesScalarReferenceExactly) {
  const ZooCase& c = GetParam();
  SCOPED_TRACE(seed_trace(c.seed));
  const Network net = build_zoo(c.arch, c.seed);
  QuantOptions o;
  o.bits = c.bits;
  o.is_signed = c.is_signed;
  const QuantFormats q = calibrate(net, random_images(net.input, 4, c.seed + 1), o);
  const auto s = expect_engine_matches_reference(net, q, random_images(net.input, c.images, c.seed + 2));
  EXPECT_GT(s.rounded, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Calibrated, ZooNetwork,
    ::testing::Values(ZooCase{"mnist-cnn", 8, true, 3, 11}, ZooCase{"mnist-cnn-opt", 8, true, 3, 12},
                      ZooCase{"mnist-cnn-opt", 8, false, 3, 13}, ZooCase{"mnist-cnn", 4, true, 3, 14},
                      ZooCase{"cifar-cnn-opt", 8, true, 2, 15}),
    [](const auto& info) {
      std::string n = info.param.arch + (info.param.is_signed ? "_s" : "_u") +
                      std::to_string(info.param.bits);
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// ---------------------------------------------------------------------------------------------
// 3. A network small enough to compute by hand.
// ---------------------------------------------------------------------------------------------
namespace {

/// 1x2x2 input (mean 0, std 1, so x = pixel / 255) -> 1x1 convolution to 2 channels (the site)
/// -> global average pooling (the last block: class scores).
Network hand_net(bool relu) {
  Network net;
  net.arch = "hand";
  net.input = {1, 2, 2};
  net.input_mean = {0.0};
  net.input_std = {1.0};
  Block conv;
  conv.name = "conv";
  conv.out_channels = 2;
  conv.weight = torch::tensor({7.75f, -0.625f}).view({2, 1, 1, 1});
  conv.bias = torch::tensor({2.5f, 0.234375f});
  conv.relu = relu;
  Block gap;
  gap.name = "gap";
  gap.op = Op::Pool;
  gap.inputs = {0};
  gap.pool = PoolSpec::global_avg();
  net.blocks = {conv, gap};
  net.validate();
  return net;
}

QuantFormats hand_formats(bool is_signed) {
  QuantFormats q;
  q.input = {8, 4, is_signed};                       // x * 16
  q.act = {{8, 5, is_signed}, {8, 0, is_signed}};    // site: acc / 2 (f_acc = 6); scores unused
  q.weight = {{8, 2, true}, {8, 0, true}};           // w * 4
  q.bias_bits = 32;
  return q;
}

torch::Tensor hand_image() { return torch::tensor({0, 51, 102, 255}, torch::kUInt8).view({1, 1, 2, 2}); }

std::vector<double> values(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous().flatten();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

}  // namespace

// Input   x = {0, 51, 102, 255} / 255 = {0, 0.2, 0.4, 1}; at f_in = 4: x * 16 = {0, 3.2, 6.4, 16}
//         -> codes {0, 3, 6, 16}.
// Weights at f_w = 2: 7.75 * 4 = 31; -0.625 * 4 = -2.5, a tie, rounds half up to -2.
// Biases at f_acc = 4 + 2 = 6: 2.5 * 64 = 160; 0.234375 * 64 = 15.
// Accumulators: channel 0 = 31 * in + 160 = {160, 253, 346, 656}
//               channel 1 = -2 * in + 15  = {15, 9, 3, -17}
// Site at f_out = 5: value = acc * 2^(5 - 6) = acc / 2, rounded half up, then saturated:
//   signed s8.5 ([-128, 127]), no ReLU:
//     channel 0: {80, 126.5 -> 127 (tie), 173 -> 127 (saturated), 328 -> 127 (saturated)}
//     channel 1: {7.5 -> 8, 4.5 -> 5, 1.5 -> 2 (ties), -8.5 -> -8 (negative tie: up, to -8)}
//     scores (sums over the 2x2 map, the global average's numerator): {461, 7}
//   unsigned u8.5 ([0, 255]), ReLU on the accumulator first (-17 -> 0):
//     channel 0: {80, 127 (tie), 173, 328 -> 255 (saturated)}
//     channel 1: {8, 5, 2, 0}
//     scores: {635, 15}
TEST(HandWorked, SignedSiteRoundsHalfUpAndSaturates) {
  const QuantizedNetwork qn(hand_net(/*relu=*/false), hand_formats(/*is_signed=*/true));
  EXPECT_EQ(values(qn.quantize_input(hand_image())), (std::vector<double>{0, 3, 6, 16}));
  EXPECT_EQ(values(qn.weight_codes(0)), (std::vector<double>{31, -2}));
  EXPECT_EQ(values(qn.bias_codes(0)), (std::vector<double>{160, 15}));
  const auto out = qn.forward_all(qn.quantize_input(hand_image()));
  EXPECT_EQ(values(out[0]), (std::vector<double>{80, 127, 127, 127, 8, 5, 2, -8}));
  EXPECT_EQ(values(out[1]), (std::vector<double>{461, 7}));
  EXPECT_EQ(out[1].scalar_type(), torch::kFloat64);
  EXPECT_EQ(values(qn.scores(hand_image())), (std::vector<double>{461, 7}));
}

TEST(HandWorked, UnsignedSiteAppliesReluThenRoundsAndSaturates) {
  const QuantizedNetwork qn(hand_net(/*relu=*/true), hand_formats(/*is_signed=*/false));
  EXPECT_EQ(values(qn.quantize_input(hand_image())), (std::vector<double>{0, 3, 6, 16}));
  const auto out = qn.forward_all(qn.quantize_input(hand_image()));
  EXPECT_EQ(values(out[0]), (std::vector<double>{80, 127, 173, 255, 8, 5, 2, 0}));
  EXPECT_EQ(values(out[1]), (std::vector<double>{635, 15}));
}

// The scalar reference agrees with the hand-worked numbers too, so it is checked from outside.
TEST(HandWorked, ReferenceGivesTheSameNumbers) {
  for (bool is_signed : {true, false}) {
    const Network net = hand_net(!is_signed);
    const QuantFormats q = hand_formats(is_signed);
    const ref::Map in = ref::input_codes(net.preprocess(hand_image()), 0, q.input);
    EXPECT_EQ(in.v, (std::vector<int64_t>{0, 3, 6, 16}));
    ref::Stats s;
    const auto out = ref::forward(net, q, in, &s);
    if (is_signed) {
      EXPECT_EQ(out[0].v, (std::vector<int64_t>{80, 127, 127, 127, 8, 5, 2, -8}));
      EXPECT_EQ(out[1].v, (std::vector<int64_t>{461, 7}));
      EXPECT_EQ(s.ties, 5);
      EXPECT_EQ(s.negative_ties, 1);
      EXPECT_EQ(s.saturated, 2);
    } else {
      EXPECT_EQ(out[0].v, (std::vector<int64_t>{80, 127, 173, 255, 8, 5, 2, 0}));
      EXPECT_EQ(out[1].v, (std::vector<int64_t>{635, 15}));
      EXPECT_EQ(s.ties, 4);
      EXPECT_EQ(s.saturated, 1);
    }
  }
}

namespace {

/// 1x2x2 input (x = pixel / 255) -> two 1x1 convolutions of it into sites of different formats,
/// a = 7.75 x at f = 3 and b = -0.625 x - 0.5 at f = 5 -> their sum with ReLU and a clamp at
/// `clamp_max` into f = 4 -> global average pooling (the class score).
Network add_net(double clamp_max) {
  Network net = hand_net(false);
  net.arch = "hand-add";
  Block a = net.blocks[0];
  a.name = "a";
  a.out_channels = 1;
  a.weight = torch::tensor({7.75f}).view({1, 1, 1, 1});
  a.bias = torch::tensor({0.0f});
  Block b = a;
  b.name = "b";
  b.weight = torch::tensor({-0.625f}).view({1, 1, 1, 1});
  b.bias = torch::tensor({-0.5f});
  Block add;
  add.name = "add";
  add.op = Op::Add;
  add.inputs = {0, 1};
  add.relu = true;
  add.clamp_max = clamp_max;
  Block gap = net.blocks[1];
  gap.inputs = {2};
  net.blocks = {a, b, add, gap};
  net.validate();
  return net;
}

QuantFormats add_formats() {
  QuantFormats q;
  q.input = {8, 4, true};
  q.act = {{8, 3, true}, {8, 5, true}, {8, 4, true}, {8, 0, true}};
  q.weight = {{8, 2, true}, {8, 2, true}, {8, 0, true}, {8, 0, true}};
  return q;
}

}  // namespace

// Input codes at f = 4: {0, 3, 6, 16} (as in the hand-worked network above).
// a: weight 7.75 * 4 = 31, accumulator at f = 6: 31 * in = {0, 93, 186, 496}; into f = 3 (/ 8):
//    {0, 11.625 -> 12, 23.25 -> 23, 62}.
// b: weight -0.625 * 4 = -2.5 -> -2 (tie), bias -0.5 * 64 = -32; accumulator -2 * in - 32 =
//    {-32, -38, -44, -64}; into f = 5 (/ 2): {-16, -19, -22, -32}.
// add: the finest input format is F = 5: a's codes shift left by 2 to {0, 48, 92, 248}, b's
//    stay; the integer sum at F = 5 is {-16, 29, 70, 216} (= -0.5, 0.906, 2.19, 6.75 exactly).
//    ReLU: {0, 29, 70, 216}. ReLU6 clamps at 6 * 2^5 = 192: {0, 29, 70, 192}. One rounding into
//    f = 4 (/ 2): {0, 14.5 -> 15 (tie), 35, 96}, no saturation (96 <= 127). Without the clamp
//    216 / 2 = 108. Score: 0 + 15 + 35 + 96 = 146.
//    Clamp at 2.7 instead: in codes, 2.7 * 2^4 = 43.2 rounds to 43, so the last code is 43; the
//    sum 216 rounded (108) or the bound at F = 5 widened to 87 and rounded (43.5 -> 44) would not
//    be 2.7 rounded. Score: 0 + 15 + 35 + 43 = 93.
TEST(HandWorked, AdditionAlignsToTheFinestFormatThenClampsAndRoundsOnce) {
  const QuantizedNetwork qn(add_net(6), add_formats());
  EXPECT_EQ(qn.input_format(2).frac, 5);
  EXPECT_EQ(qn.input_format(2).bits, 10) << "an s8.3 code shifted by 2 needs 10 bits";
  const auto out = qn.forward_all(qn.quantize_input(hand_image()));
  EXPECT_EQ(values(out[0]), (std::vector<double>{0, 12, 23, 62}));
  EXPECT_EQ(values(out[1]), (std::vector<double>{-16, -19, -22, -32}));
  EXPECT_EQ(values(out[2]), (std::vector<double>{0, 15, 35, 96}));
  EXPECT_EQ(values(out[3]), (std::vector<double>{146}));
  const QuantizedNetwork plain(add_net(INFINITY), add_formats());
  EXPECT_EQ(values(plain.forward_all(plain.quantize_input(hand_image()))[2]),
            (std::vector<double>{0, 15, 35, 108}));
  const QuantizedNetwork odd(add_net(2.7), add_formats());
  const auto out27 = odd.forward_all(odd.quantize_input(hand_image()));
  EXPECT_EQ(values(out27[2]), (std::vector<double>{0, 15, 35, 43}));
  EXPECT_EQ(values(out27[3]), (std::vector<double>{93}));
  for (double clamp : {6.0, 2.7}) {
    const Network net = add_net(clamp);
    const ref::Map in = ref::input_codes(net.preprocess(hand_image()), 0, add_formats().input);
    ref::Stats st;
    const auto r = ref::forward(net, add_formats(), in, &st);
    EXPECT_EQ(r[2].v, (std::vector<int64_t>{0, 15, 35, clamp == 6.0 ? 96 : 43}));
    EXPECT_EQ(st.clamped, 1);
    EXPECT_EQ(st.aligned, 1);
    EXPECT_EQ(st.ties, 1);
  }
}

// A clamp whose bound falls between two numerators cannot be exact before an average pooling:
// refused, with the bound.
TEST(HandWorked, ClampBeforeAveragePoolingNeedsWholeBounds) {
  Network net = add_net(6);
  net.blocks[2].post = {PoolKind::Avg, 2, 1, 0, false};
  net.validate();
  EXPECT_NO_THROW(QuantizedNetwork(net, add_formats()));
  net.blocks[2].clamp_max = 2.7;
  try {
    QuantizedNetwork qn(net, add_formats());
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2.7"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// 4. The helpers.
// ---------------------------------------------------------------------------------------------

// round_div is floor(x / d + 1/2): ties go up, for negative numerators too, exactly in int64.
TEST(Helpers, RoundDivRoundsHalfUp) {
  const auto x = torch::tensor({5.0, -5.0, 4.0, -4.0, 7.0, -7.0, 0.0, 3.0, -3.0}, torch::kFloat64);
  EXPECT_EQ(values(round_div(x, 2)), (std::vector<double>{3, -2, 2, -2, 4, -3, 0, 2, -1}));
  // d = 4: 1.25, -1.25, 1, -1, 1.75, -1.75, 0, 0.75, -0.75
  EXPECT_EQ(values(round_div(x, 4)), (std::vector<double>{1, -1, 1, -1, 2, -2, 0, 1, -1}));
  EXPECT_EQ(values(round_div(torch::tensor({6.0, -6.0, 2.0, -2.0}, torch::kFloat64), 4)),
            (std::vector<double>{2, -1, 1, 0}));  // 1.5, -1.5, 0.5, -0.5
  EXPECT_EQ(values(round_div(x, 1)), values(x));
  // Beyond float32 and near float64's integer limit: still exact.
  const double big = std::ldexp(1.0, 50) + 1;  // (2^50 + 1) / 2 = 2^49 + 0.5 -> 2^49 + 1
  EXPECT_EQ(values(round_div(torch::tensor({big, -big}, torch::kFloat64), 2)),
            (std::vector<double>{std::ldexp(1.0, 49) + 1, -std::ldexp(1.0, 49)}));
  EXPECT_THROW(round_div(x, 0), Error);
  EXPECT_THROW(round_div(x, -2), Error);
}

// requantize shifts between fractional lengths with the same rounding and saturation.
TEST(Helpers, RequantizeShiftsRoundsAndSaturates) {
  const auto codes = torch::tensor({6.0, -6.0, 5.0, -10.0, 1000.0, -1000.0}, torch::kFloat64);
  // From f = 6 to f = 4: divide by 4: 1.5, -1.5, 1.25, -2.5, 250, -250.
  EXPECT_EQ(values(requantize(codes, 6, {8, 4, true})),
            (std::vector<double>{2, -1, 1, -2, 127, -128}));
  EXPECT_EQ(values(requantize(codes, 6, {8, 4, false})), (std::vector<double>{2, 0, 1, 0, 250, 0}));
  EXPECT_EQ(values(requantize(codes * 2, 6, {8, 4, false})),
            (std::vector<double>{3, 0, 3, 0, 255, 0}));  // 3, -3, 2.5, -5, 500, -500
  EXPECT_EQ(values(requantize(codes, 6, {4, 4, true})), (std::vector<double>{2, -1, 1, -2, 7, -8}));
  // From f = 2 to f = 4: multiply by 4, exactly; then saturate.
  EXPECT_EQ(values(requantize(codes, 2, {8, 4, true})),
            (std::vector<double>{24, -24, 20, -40, 127, -128}));
  // Same fractional length: only saturation.
  EXPECT_EQ(values(requantize(codes, 4, {8, 4, true})),
            (std::vector<double>{6, -6, 5, -10, 127, -128}));
}

// to_codes rounds real values half up and saturates, for any fractional length.
TEST(Helpers, ToCodesRoundsHalfUpAndSaturates) {
  const auto v = torch::tensor({0.3, -0.3, 0.0625, -0.0625, 0.1875, -0.1875, 100.0, -100.0},
                               torch::kFloat64);
  // x * 8: 2.4, -2.4, 0.5, -0.5, 1.5, -1.5, 800, -800.
  EXPECT_EQ(values(to_codes(v, {8, 3, true})), (std::vector<double>{2, -2, 1, 0, 2, -1, 127, -128}));
  EXPECT_EQ(values(to_codes(v, {8, 3, false})), (std::vector<double>{2, 0, 1, 0, 2, 0, 255, 0}));
  EXPECT_EQ(values(to_codes(v, {4, 3, true})), (std::vector<double>{2, -2, 1, 0, 2, -1, 7, -8}));
  // A negative fractional length: x / 4: 2.5 -> 3, -2.5 -> -2, 25, -25.
  EXPECT_EQ(values(to_codes(torch::tensor({10.0, -10.0, 100.0, -100.0}), {8, -2, true})),
            (std::vector<double>{3, -2, 25, -25}));
}

// best_frac minimizes the quantization error: the range that just holds the values wins.
TEST(Helpers, BestFracFitsTheRange) {
  auto gen = generator(7);
  SCOPED_TRACE(seed_trace(7));
  const auto unit = torch::rand({10000}, gen) * 2 - 1;  // uniform in [-1, 1)
  EXPECT_EQ(best_frac(unit, 8, true, -16, 30), 7);       // s8.7 holds [-1, 0.992]
  EXPECT_EQ(best_frac(unit.abs(), 8, false, -16, 30), 8);  // u8.8 holds [0, 0.996]
  const auto wide = torch::linspace(-3.9, 3.9, 10001);
  EXPECT_EQ(best_frac(wide, 8, true, -16, 30), 5);       // s8.5 holds [-4, 3.97]
  EXPECT_EQ(best_frac(wide, 4, true, -16, 30), 1);       // s4.1 holds [-4, 3.5]
  EXPECT_EQ(best_frac(torch::zeros({5}), 8, true, -16, 30), 7);  // never fires: bits - 1
  EXPECT_EQ(best_frac(torch::zeros({5}), 4, false, -16, 30), 3);
  // 0.5 and -0.25 are exact from f = 2 up to f = 7: ties go to the larger range.
  EXPECT_EQ(best_frac(torch::tensor({0.5, -0.25}), 8, true, -16, 30), 2);
  // The search range is respected.
  EXPECT_EQ(best_frac(unit, 8, true, -16, 4), 4);
  EXPECT_EQ(best_frac(unit, 8, true, 9, 30), 9);
}

// FracSearch fed in parts picks what best_frac picks on the whole, and both pick the argmin of
// the squared error computed value by value in double precision.
TEST(Helpers, FracSearchInPartsEqualsTheWholeAndAPlainLoop) {
  auto gen = generator(11);
  SCOPED_TRACE(seed_trace(11));
  // Mostly small values with a few large ones: the error trades rounding against saturation.
  const auto v = (torch::randn({3000}, gen) * 0.3 +
                  torch::where(torch::rand({3000}, gen) < 0.01, torch::full({3000}, 5.0),
                               torch::zeros({3000})))
                     .to(torch::kFloat32);
  for (const bool is_signed : {true, false}) {
    const auto x = is_signed ? v : v.abs();
    for (const int bits : {4, 8}) {
      FracSearch parts(bits, is_signed, -6, 12);
      for (const auto& part : x.split(700)) parts.add(part);
      int plain = -6;
      double least = std::numeric_limits<double>::infinity();
      const FixedPoint probe{bits, 0, is_signed};
      const auto xc = x.contiguous();
      const float* xs = xc.data_ptr<float>();
      for (int f = -6; f <= 12; ++f) {
        double sse = 0;
        for (int64_t i = 0; i < xc.numel(); ++i) {
          const double r = xs[i];
          const double code = std::clamp(std::floor(std::ldexp(r, f) + 0.5),
                                         static_cast<double>(probe.min_code()),
                                         static_cast<double>(probe.max_code()));
          sse += std::pow(std::ldexp(code, -f) - r, 2);
        }
        if (sse < least * (1 - 1e-9)) {
          least = sse;
          plain = f;
        }
      }
      EXPECT_EQ(parts.best(), plain) << "bits " << bits << " signed " << is_signed;
      EXPECT_EQ(best_frac(x, bits, is_signed, -6, 12), plain);
      EXPECT_FLOAT_EQ(parts.min(), x.min().item<float>());
    }
  }
  EXPECT_THROW(FracSearch(8, true, 3, 2), Error);
}

// calibrate works batch by batch; its formats equal best_frac over every calibration image's
// activations at once (600 images: three batches), signed and unsigned.
TEST(Calibrate, BatchedSearchEqualsTheWholeActivations) {
  const Network net = tiny_net(12, /*relu_everywhere=*/true);
  const auto images = random_images(net.input, 600, 12);
  torch::NoGradGuard no_grad;
  const auto x = net.preprocess(images);
  const auto acts = net.forward_all(x);
  for (const bool is_signed : {true, false}) {
    QuantOptions o;
    o.refine = false;
    o.is_signed = is_signed;
    const QuantFormats q = calibrate(net, images, o);
    EXPECT_EQ(q.input.frac, best_frac(x, 8, true, o.min_frac, o.max_frac));
    for (size_t b = 0; b < acts.size(); ++b)
      EXPECT_EQ(q.act[b].frac, best_frac(acts[b], 8, is_signed, o.min_frac, o.max_frac))
          << "block " << b << " signed " << is_signed;
  }
}

// --unsigned is refused for a site that takes negative values.
TEST(Helpers, CalibrateUnsignedRejectsNegativeSites) {
  Network net = tiny_net(5, /*relu_everywhere=*/false);  // conv1 has no ReLU
  const auto images = random_images(net.input, 4, 6);
  QuantOptions o;
  o.is_signed = false;
  EXPECT_THROW(calibrate(net, images, o), Error);
  o.is_signed = true;
  EXPECT_NO_THROW(calibrate(net, images, o));
}

// The class scores are no site: negative scores do not stop an unsigned network.
TEST(Helpers, CalibrateUnsignedAcceptsNegativeClassScores) {
  const Network net = tiny_net(5, /*relu_everywhere=*/true);
  QuantOptions o;
  o.is_signed = false;
  const QuantFormats q = calibrate(net, random_images(net.input, 4, 6), o);
  for (int s : net.sites()) EXPECT_FALSE(q.act[s].is_signed) << "site " << s;
  EXPECT_TRUE(q.input.is_signed) << "the pre-processed input takes negative values";
}

// score_scale turns the exact class scores into real units: on a network whose formats represent
// every value exactly, the fixed-point scores times the scale equal the float scores.
TEST(Scores, ScaleGivesRealUnits) {
  for (const char* arch : {"mnist-cnn", "mnist-cnn-opt"}) {
    Network net = build_zoo(arch, 3);
    // Weights on a coarse grid and 16-bit sites with many fractional bits: almost no rounding.
    for (Block& b : net.blocks)
      if (b.weighted()) {
        b.weight = torch::round(b.weight * 64) / 64;
        b.bias = torch::zeros_like(b.bias);
      }
    QuantFormats q;
    q.input = {16, 8, true};
    for (size_t i = 0; i < net.blocks.size(); ++i) {
      q.act.push_back({16, 10, true});
      q.weight.push_back({8, 6, true});
    }
    const QuantizedNetwork qn(net, q);
    auto images = torch::randint(0, 256, {3, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
    torch::NoGradGuard g;
    auto reference = net.forward(net.preprocess(images)).to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(qn.scores(images) * qn.score_scale(), reference, 1e-2, 1e-2))
        << arch;
  }
}

// The greedy refinement only accepts moves that lower the output error.
TEST(Calibrate, RefinementNeverIncreasesTheOutputError) {
  Network net = build_zoo("mnist-cnn", 4);
  auto images = torch::randint(0, 256, {16, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  QuantOptions plain;
  plain.refine = false;
  QuantOptions refined;
  const QuantFormats a = calibrate(net, images, plain);
  const QuantFormats b = calibrate(net, images, refined);
  EXPECT_LE(output_error(net, b, images), output_error(net, a, images));
}

// calibrate on the residual and depthwise graphs: each site's format is best_frac of its float
// activations (additions, depthwise convolutions and clamps are sites like any other), and the
// refinement runs through them.
TEST(Calibrate, AdditionsGroupsAndClampsAreSitesLikeAnyOther) {
  for (const Network& net : {test::residual_graph(), test::depthwise_graph()}) {
    SCOPED_TRACE(net.arch);
    const auto images = random_images(net.input, 24, 31);
    torch::NoGradGuard no_grad;
    const auto acts = net.forward_all(net.preprocess(images));
    QuantOptions o;
    o.refine = false;
    const QuantFormats q = calibrate(net, images, o);
    for (int b : net.sites())
      EXPECT_EQ(q.act[b].frac, best_frac(acts[b], 8, true, o.min_frac, o.max_frac)) << "site " << b;
    const QuantFormats refined = calibrate(net, images.slice(0, 0, 8), QuantOptions{});
    EXPECT_LE(output_error(net, refined, images.slice(0, 0, 8)),
              output_error(net, calibrate(net, images.slice(0, 0, 8), o), images.slice(0, 0, 8)));
  }
}

// The 8-bit residual and depthwise networks, trained for one short epoch, are within a point of
// their float accuracy on the 500 test images they were calibrated on.
TEST(Calibrate, EightBitGraphsKeepTheirFloatAccuracy) {
  const Dataset test = load_dataset(parse_data_spec("mnist"), Split::Test).head(500);
  for (const bool residual : {true, false}) {
    const test::TrainedGraph t(residual ? test::residual_graph() : test::depthwise_graph(), 500);
    const double fl = float_accuracy(t.net, test.images, test.labels);
    const double q8 = t.q->accuracy(test.images, test.labels);
    SCOPED_TRACE(t.net.arch + ": float " + std::to_string(fl) + ", 8-bit " + std::to_string(q8));
    EXPECT_GT(fl, 0.2) << "better than chance (one short epoch: about 0.35 and 0.26)";
    EXPECT_NEAR(q8, fl, 0.01);
    EXPECT_DOUBLE_EQ(t.g->accuracy(), q8);
  }
}
