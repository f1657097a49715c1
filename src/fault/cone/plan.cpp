// The cone engine's stage compilation: the network's blocks become Stages (weights channels
// innermost, int16 pairs for the paired multiply-add, rounding with the clamps folded in, which
// steps may run in int32), and every site's last reader.
#include <flipguard/error.hpp>

#include "engine.hpp"

#include <cmath>

namespace flipguard {

using cone::Kind;

namespace {

/// The code that the exact bound `bound` (a clamp bound at the block's precision) rounds to.
int64_t bound_code(const Requant& rq, double bound) {
  // Beyond one code past the range, it saturates anyway (and rq could overflow int64).
  const double scaled = bound * rq.scale();
  if (scaled >= static_cast<double>(rq.hi) + 1) return rq.hi;
  if (scaled <= static_cast<double>(rq.lo) - 1) return rq.lo;
  return rq(static_cast<int64_t>(bound));
}

}  // namespace

void ConeEngine::Impl::build() {
  const Network& net = q.network();
  const auto& blocks = net.blocks;
  const int nb = static_cast<int>(blocks.size());
  std::vector<Shape> pre;
  const auto shapes = net.shapes(&pre);
  const auto& fmt = q.formats();
  classes = net.num_classes();
  for (int b = 0; b < nb; ++b) {
    const Block& blk = blocks[b];
    Stage s;
    s.last = b + 1 == nb;
    s.relu = blk.relu;
    s.inputs = blk.inputs;
    const int j0 = blk.inputs[0];
    s.in = j0 == Block::kNetworkInput ? net.input : shapes[j0];
    s.pre = pre[b];
    s.out = shapes[b];
    const FixedPoint in_fmt = q.input_format(b);
    int frac = in_fmt.frac;
    int64_t divisor = 1;
    auto check_max = [&](const PoolSpec& p) {
      if (p.padding != 0 || p.ceil_mode)
        fail("block '", blk.name, "': max pooling with padding or ceil_mode");
    };
    if (blk.weighted()) {
      s.kind = blk.op == Op::Conv ? Kind::Conv : Kind::Linear;
      frac = q.acc_frac(b);
      const auto w = q.weight_codes(b).to(torch::kInt32);
      const int64_t K = w.size(0);
      if (s.kind == Kind::Conv) {
        s.kernel = blk.kernel;
        s.stride = blk.stride;
        s.pad = blk.padding;
        s.dil = blk.dilation;
        s.groups = blk.groups;
        // [G][K/G][C/G][k][k] -> [G][C/G][k][k][K/G] = [C][k][k][K/G]: input channel c's taps
        // to the output channels of its group.
        const int64_t G = blk.groups, k = blk.kernel;
        s.wt = to_vector(
            w.view({G, K / G, w.size(1), k, k}).permute({0, 2, 3, 4, 1}).contiguous());
        const double span16 = static_cast<double>(in_fmt.max_code() - in_fmt.min_code());
        const double wmax = w.abs().max().item<double>();
        // The channel pairs of the paired multiply-add would straddle groups.
        if (G == 1 && span16 <= 32767 && wmax <= 32767) {
          s.packed = true;
          const int64_t C = w.size(1), C2 = (C + 1) / 2;
          s.wt16.assign(static_cast<size_t>(k * k * C2 * K * 2), 0);
          const auto acc = w.accessor<int32_t, 4>();
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j)
              for (int64_t c = 0; c < C; ++c)
                for (int64_t o = 0; o < K; ++o)
                  s.wt16[((((i * k + j) * C2 + c / 2) * K + o) * 2) + c % 2] =
                      static_cast<int16_t>(acc[o][c][i][j]);
        }
      } else {
        if (blk.post.kind != PoolKind::None)
          fail("block '", blk.name, "': pooling behind a fully-connected block");
        s.wt = to_vector(w.t().contiguous());
      }
      // The change of an accumulator must fit int32: span of input codes x sum of |weights|.
      const double span = static_cast<double>(in_fmt.max_code() - in_fmt.min_code());
      const double wsum = w.abs().to(torch::kFloat64).view({K, -1}).sum(1).max().item<double>();
      if (span * wsum >= 2147483647.0)
        fail("block '", blk.name, "': changes of its accumulator may overflow 32 bits");
      s.delta_max = static_cast<int64_t>(span * wsum);
      if (blk.post.kind == PoolKind::Max) {
        if (s.last) fail("the last block has max pooling");
        check_max(blk.post);
        s.post_max = true;
        s.pk = blk.post.kernel;
        s.ps = blk.post.stride;
      } else if (blk.post.kind == PoolKind::GlobalAvg) {
        if (!s.last) fail("block '", blk.name, "': global average pooling behind a site");
        s.post_gap = true;
      } else if (blk.post.kind != PoolKind::None) {
        fail("block '", blk.name, "': average pooling behind it");
      }
    } else if (blk.op == Op::Pool) {
      if (s.last) fail("the last block is a pooling block");
      if (blk.post.kind != PoolKind::None) fail("block '", blk.name, "': pooling behind pooling");
      if (blk.pool.kind == PoolKind::Max) {
        check_max(blk.pool);
        s.kind = Kind::MaxPool;
        s.pk = blk.pool.kernel;
        s.ps = blk.pool.stride;
      } else if (blk.pool.kind == PoolKind::GlobalAvg) {
        s.kind = Kind::GapPool;
        divisor = s.in.h * s.in.w;
      } else {
        fail("block '", blk.name, "': average pooling");
      }
    } else if (blk.op == Op::Add) {
      if (s.last) fail("the last block is an addition");
      if (blk.post.kind != PoolKind::None) fail("block '", blk.name, "': pooling behind an addition");
      s.kind = Kind::Add;
      for (int j : blk.inputs) {
        if (j == Block::kNetworkInput) fail("block '", blk.name, "': an addition of the input");
        s.align.push_back(frac - q.format_of(j).frac);
      }
    } else {
      fail("block '", blk.name, "': concatenation");
    }
    if (s.last && blk.clamps()) fail("the last block clamps its class scores");
    if (!s.last) {
      s.rq = Requant(fmt.act[b].frac - frac, divisor, fmt.act[b]);
      if (blk.clamps()) {
        // The bounds at the exact value's precision must be integers for the exact rounding of
        // the reference (quantize.cpp) to be the rounding of one int64 numerator.
        const double unit = std::ldexp(1.0, frac) * static_cast<double>(divisor);
        const double bounds[2] = {blk.clamp_min, blk.clamp_max};
        int64_t codes[2] = {s.rq.lo, s.rq.hi};
        for (int e = 0; e < 2; ++e) {
          if (std::isinf(bounds[e])) continue;
          const double bound = bounds[e] * unit;
          if (bound != std::floor(bound) || std::abs(bound) >= 9.0e15)
            fail("block '", blk.name, "': clamp bound ", bounds[e], " is not an integer at 2^-",
                 frac, " / ", divisor);
          codes[e] = bound_code(s.rq, bound);
        }
        // Saturation after the clamp is one clamp to the clamp's bounds saturated.
        const int64_t lo = std::clamp(codes[0], s.rq.lo, s.rq.hi);
        s.rq.hi = std::clamp(codes[1], s.rq.lo, s.rq.hi);
        s.rq.lo = lo;
      }
    }
    const bool one = s.kind == Kind::Conv ? s.kernel == 1 && s.stride == 1 && s.pad == 0 &&
                                                s.groups == 1
                                          : s.kind == Kind::Linear && s.in.h == 1 && s.in.w == 1;
    s.summed = s.last && !s.relu && one && (s.post_gap || (s.pre.h == 1 && s.pre.w == 1));
    stages.push_back(std::move(s));
  }
  // Scores must be exact in int64 (they are exact integers in float64).
  if (g.correct() > 0 && g.scores().abs().max().item<double>() >= 9.0e15)
    fail("class scores beyond 2^53");
  if (nb >= 2) build_bound(stages[nb - 2], nb - 1);
  for (int b = 0; b + 1 < nb; ++b) {
    Stage& s = stages[b];
    s.by_shift = s.rq.divisor == 1 && s.rq.shift < 0 && s.rq.shift >= -30;
    s.into_sum = stages[b + 1].summed && stages[b + 1].inputs == std::vector<int>{b};
    // The fused kernel takes every channel of a reached position: no groups.
    s.fused = s.shifted() && s.into_sum && s.groups == 1;
  }
  // A site's change is kept until its last reader has used it.
  last_reader.assign(static_cast<size_t>(nb), -1);
  for (int b = 0; b < nb; ++b)
    for (int j : blocks[b].inputs)
      if (j != Block::kNetworkInput) last_reader[j] = b;
}

std::vector<int32_t> ConeEngine::Impl::to_vector(const torch::Tensor& t) {
  const auto c = t.contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

}  // namespace flipguard
