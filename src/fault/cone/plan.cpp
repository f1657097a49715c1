// The cone engine's stage compilation: a chain of blocks becomes Stages (weights channels
// innermost, int16 pairs for the paired multiply-add, rounding, which steps may run in int32).
#include <flipguard/error.hpp>

#include "engine.hpp"

namespace flipguard {

using cone::Kind;

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
    if (blk.inputs.size() != 1 || blk.inputs[0] != b - 1)
      fail("block '", blk.name, "' does not read just the block before it");
    s.in = b == 0 ? net.input : shapes[b - 1];
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
        s.wt = to_vector(w.permute({1, 2, 3, 0}).contiguous());
        const double span16 = static_cast<double>(in_fmt.max_code() - in_fmt.min_code());
        const double wmax = w.abs().max().item<double>();
        if (span16 <= 32767 && wmax <= 32767) {
          s.packed = true;
          const int64_t C = w.size(1), k = blk.kernel, C2 = (C + 1) / 2;
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
    } else {
      fail("block '", blk.name, "': concatenation");
    }
    if (!s.last) s.rq = Requant(fmt.act[b].frac - frac, divisor, fmt.act[b]);
    const bool one = s.kind == Kind::Conv ? s.kernel == 1 && s.stride == 1 && s.pad == 0
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
    s.fused = s.shifted() && stages[b + 1].summed;
  }
}

std::vector<int32_t> ConeEngine::Impl::to_vector(const torch::Tensor& t) {
  const auto c = t.contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

}  // namespace flipguard
