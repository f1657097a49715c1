// The incremental engine: recomputes only the cone of influence of one flipped neuron.
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>

#include "../quant/rounding.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <utility>

namespace flipguard {

namespace {

using Channels = ChannelRange;

/// A window of a block's output: rows [y0, y1), columns [x0, x1), every channel.
struct Rect {
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;
  bool empty() const { return y0 >= y1 || x0 >= x1; }
};

/// A block whose output differs from the golden run: where (a window of rows and columns, and
/// channels [c0, c1)), and the new codes there for the images still in play.
struct Change {
  bool active = false;
  Rect rect;
  int64_t c0 = 0, c1 = 0;
  torch::Tensor values;   // images x (c1 - c0) x (y1 - y0) x (x1 - x0), float32 codes
  torch::Tensor differs;  // images: whether the image's codes differ anywhere in the window
};

/// A sliding window (kernel, stride, padding, dilation) along one axis.
struct Slide {
  int64_t kernel = 1, stride = 1, padding = 0, dilation = 1;
  /// Output positions, within [0, n), whose window reads input positions [a0, a1).
  std::pair<int64_t, int64_t> readers(int64_t a0, int64_t a1, int64_t n) const {
    const int64_t reach = dilation * (kernel - 1);
    return {std::max<int64_t>(0, ceil_div(a0 + padding - reach, stride)),
            std::min<int64_t>(n, floor_div(a1 - 1 + padding, stride) + 1)};
  }
  /// The input positions that outputs [o0, o1) read, padding included (may reach past the map).
  std::pair<int64_t, int64_t> reads(int64_t o0, int64_t o1) const {
    return {o0 * stride - padding, (o1 - 1) * stride - padding + dilation * (kernel - 1) + 1};
  }
};

Slide conv_slide(const Block& b) { return {b.kernel, b.stride, b.padding, b.dilation}; }
Slide pool_slide(const PoolSpec& p) { return {p.kernel, p.stride, p.padding, 1}; }

Rect readers(const Slide& s, const Rect& r, const Shape& out) {
  const auto [y0, y1] = s.readers(r.y0, r.y1, out.h);
  const auto [x0, x1] = s.readers(r.x0, r.x1, out.w);
  return {y0, y1, x0, x1};
}

Rect reads(const Slide& s, const Rect& r) {
  const auto [y0, y1] = s.reads(r.y0, r.y1);
  const auto [x0, x1] = s.reads(r.x0, r.x1);
  return {y0, y1, x0, x1};
}

Rect hull(const Rect& a, const Rect& b) {
  if (a.empty()) return b;
  return {std::min(a.y0, b.y0), std::max(a.y1, b.y1), std::min(a.x0, b.x0), std::max(a.x1, b.x1)};
}

}  // namespace

struct IncrementalEngine::Impl {
  const QuantizedNetwork& q;
  const GoldenRun& g;
  EngineOptions o;
  ReferenceEngine reference;
  std::vector<Shape> shapes, pre_post;
  Shape input;
  std::vector<int> last_reader;  // per block: the last block that reads it

  Impl(const QuantizedNetwork& q_, const GoldenRun& g_, FaultTarget t, const EngineOptions& o_)
      : q(q_), g(g_), o(o_), reference(q_, g_, t, o_) {
    o.chunk = q.network().batch_within(o.chunk);  // as the reference engine (checked there)
    shapes = q.network().shapes(&pre_post);
    input = q.network().input;
    const auto& blocks = q.network().blocks;
    last_reader.assign(blocks.size(), -1);
    for (int b = 0; b < static_cast<int>(blocks.size()); ++b)
      for (int j : blocks[b].inputs)
        if (j != Block::kNetworkInput) last_reader[j] = std::max(last_reader[j], b);
  }

  Shape shape_of(int j) const { return j == Block::kNetworkInput ? input : shapes[j]; }

  /// Codes of block j's output over rows [r0, r1) and columns [c0, c1) (`fill` outside the map),
  /// channels `chans` (all when their end is negative), for images `idx`, with the change of
  /// block j where it has one.
  torch::Tensor window(int j, const std::vector<Change>& ch, int64_t r0, int64_t r1, int64_t c0,
                       int64_t c1, const torch::Tensor& idx, bool with_change = true,
                       float fill = 0, Channels chans = {}) const {
    const Shape s = shape_of(j);
    if (chans.end < 0) chans = {0, s.c};
    auto out = torch::full({idx.size(0), chans.end - chans.begin, r1 - r0, c1 - c0}, fill,
                           torch::kFloat32);
    const int64_t a0 = std::max<int64_t>(r0, 0), a1 = std::min(r1, s.h);
    const int64_t b0 = std::max<int64_t>(c0, 0), b1 = std::min(c1, s.w);
    if (a0 < a1 && b0 < b1)
      out.slice(2, a0 - r0, a1 - r0).slice(3, b0 - c0, b1 - c0)
          .copy_(g.stored(j)
                     .slice(1, chans.begin, chans.end)
                     .slice(2, a0, a1)
                     .slice(3, b0, b1)
                     .index_select(0, idx));
    if (with_change && j != Block::kNetworkInput && ch[j].active) {
      const Change& c = ch[j];
      const Rect& r = c.rect;
      const int64_t y0 = std::max(r.y0, r0), y1 = std::min(r.y1, r1);
      const int64_t x0 = std::max(r.x0, c0), x1 = std::min(r.x1, c1);
      const int64_t k0 = std::max(c.c0, chans.begin), k1 = std::min(c.c1, chans.end);
      if (y0 < y1 && x0 < x1 && k0 < k1)
        out.slice(1, k0 - chans.begin, k1 - chans.begin)
            .slice(2, y0 - r0, y1 - r0)
            .slice(3, x0 - c0, x1 - c0)
            .copy_(c.values.slice(1, k0 - c.c0, k1 - c.c0)
                       .slice(2, y0 - r.y0, y1 - r.y0)
                       .slice(3, x0 - r.x0, x1 - r.x0));
    }
    return out;
  }

  /// Records block b's new codes over `rect` and channels `chans` as a change, shrunk to the
  /// positions and channels where some image differs from the golden run; forgets changes that
  /// no later block reads; and drops the images in which no remaining change differs. Returns
  /// false when no image is left.
  bool settle(int b, Rect rect, Channels chans, const torch::Tensor& values,
              std::vector<Change>& ch, torch::Tensor& idx) {
    if (chans.end < 0) chans = {0, shapes[b].c};
    const auto gold = g.stored(b)
                          .slice(1, chans.begin, chans.end)
                          .slice(2, rect.y0, rect.y1)
                          .slice(3, rect.x0, rect.x1)
                          .index_select(0, idx)
                          .to(torch::kFloat32);
    const auto diff = values.ne(gold);
    const auto differs = diff.flatten(1).any(1);
    ch[b].active = differs.any().item<bool>();
    if (ch[b].active) {
      const auto where = diff.any(0);  // channels x h x w
      const auto plane = where.any(0);
      const auto rows = plane.any(1).nonzero().flatten(), cols = plane.any(0).nonzero().flatten();
      const auto kept = where.flatten(1).any(1).nonzero().flatten();
      const int64_t ry0 = rows.min().item<int64_t>(), ry1 = rows.max().item<int64_t>() + 1;
      const int64_t cx0 = cols.min().item<int64_t>(), cx1 = cols.max().item<int64_t>() + 1;
      const int64_t k0 = kept.min().item<int64_t>(), k1 = kept.max().item<int64_t>() + 1;
      ch[b].rect = {rect.y0 + ry0, rect.y0 + ry1, rect.x0 + cx0, rect.x0 + cx1};
      ch[b].c0 = chans.begin + k0;
      ch[b].c1 = chans.begin + k1;
      ch[b].values = values.slice(1, k0, k1).slice(2, ry0, ry1).slice(3, cx0, cx1).contiguous();
      ch[b].differs = differs;
    }
    torch::Tensor keep;
    for (int j = 0; j < static_cast<int>(ch.size()); ++j) {
      if (!ch[j].active) continue;
      if (last_reader[j] <= b) {
        ch[j] = {};  // read by no block after b
        continue;
      }
      keep = keep.defined() ? keep.logical_or(ch[j].differs) : ch[j].differs;
    }
    if (!keep.defined()) return false;
    const auto kept = keep.nonzero().flatten();
    if (kept.size(0) == 0) return false;
    if (kept.size(0) < idx.size(0)) {
      idx = idx.index_select(0, kept);
      for (auto& c : ch)
        if (c.active) {
          c.values = c.values.index_select(0, kept);
          c.differs = c.differs.index_select(0, kept);
        }
    }
    return true;
  }

  /// The output channels of block b that its inputs' changes reach (`out`) and the input
  /// channels that compute them (`in`, the same for every input; all: end -1): a convolution
  /// mixes the channels of a group (all of them without groups); pooling and additions keep each
  /// channel apart (a depthwise convolution too: one channel per group).
  struct ChannelPlan {
    Channels out, in;
  };
  ChannelPlan channels(int b, const std::vector<Change>& ch) const {
    const Block& blk = q.network().blocks[b];
    int64_t c0 = std::numeric_limits<int64_t>::max(), c1 = 0;
    for (int j : blk.inputs)
      if (j != Block::kNetworkInput && ch[j].active) {
        c0 = std::min(c0, ch[j].c0);
        c1 = std::max(c1, ch[j].c1);
      }
    const bool last = b + 1 == static_cast<int>(q.network().blocks.size());
    if (c0 >= c1 || last) return {};
    switch (blk.op) {
      case Op::Pool:
      case Op::Add: return {{c0, c1}, {c0, c1}};
      case Op::Conv: {
        if (blk.groups == 1) return {};
        const int64_t in_group = shape_of(blk.inputs[0]).c / blk.groups;
        const int64_t out_group = blk.out_channels / blk.groups;
        const int64_t g0 = c0 / in_group, g1 = ceil_div(c1, in_group);
        return {{g0 * out_group, g1 * out_group}, {g0 * in_group, g1 * in_group}};
      }
      case Op::Linear:
      case Op::Concat: return {};
    }
    return {};
  }

  /// How block b's change is computed on a window of its output: the block's output rect that
  /// its inputs' changes reach (`out`), the rect of its inputs that computes it (`in`, the same
  /// for every input; padding included) with the value outside the maps (`fill`), and the -inf
  /// border of a max post pooling past the pre-pooling map (`post_pad`). False: the block is
  /// computed whole (fully-connected, average pooling, a last block without global average
  /// pooling).
  struct Plan {
    Rect out, in;
    float fill = 0;
    std::array<int64_t, 4> post_pad{0, 0, 0, 0};
  };
  bool plan(int b, const std::vector<Change>& ch, Plan& p) const {
    const Block& blk = q.network().blocks[b];
    const bool last = b + 1 == static_cast<int>(q.network().blocks.size());
    Rect changed;
    for (int j : blk.inputs) {
      if (j == Block::kNetworkInput) return false;
      if (ch[j].active) changed = hull(changed, ch[j].rect);
    }
    const Shape out = shapes[b], pre = pre_post[b];
    // The block's own window (an addition's and a concatenation's is the identity): the
    // positions before the post pooling that the change reaches, and the input window that
    // computes a pre-pooling rect.
    Slide sl;
    switch (blk.op) {
      case Op::Linear: return false;
      case Op::Concat:
      case Op::Add: break;
      case Op::Pool:
        if (blk.pool.kind != PoolKind::Max) return false;
        sl = pool_slide(blk.pool);
        p.fill = -std::numeric_limits<float>::infinity();
        break;
      case Op::Conv: sl = conv_slide(blk); break;
    }
    const Rect pre_rect = readers(sl, changed, pre);
    Rect need = pre_rect;  // the pre-pooling window that computes p.out
    p.out = pre_rect;
    if (last) {
      // Per-position numerators that sum to the scores.
      if (blk.post.kind != PoolKind::GlobalAvg &&
          !(blk.post.kind == PoolKind::None && pre.h == 1 && pre.w == 1))
        return false;
    } else if (blk.post.kind == PoolKind::Max) {
      p.out = readers(pool_slide(blk.post), pre_rect, out);
      const Rect full = reads(pool_slide(blk.post), p.out);
      need = {std::max<int64_t>(full.y0, 0), std::min(full.y1, pre.h), std::max<int64_t>(full.x0, 0),
              std::min(full.x1, pre.w)};
      p.post_pad = {need.y0 - full.y0, full.y1 - need.y1, need.x0 - full.x0, full.x1 - need.x1};
    } else if (blk.post.kind != PoolKind::None) {
      return false;
    }
    if (!p.out.empty()) p.in = reads(sl, need);
    return true;
  }

  /// The faulty class scores (exact numerators, float64) of correct images [begin, end) for one
  /// flipped neuron: the golden scores, updated for the images the change reaches.
  torch::Tensor chunk(const Fault& f, int64_t begin, int64_t end) {
    torch::Tensor result = g.scores().slice(0, begin, end).clone();
    auto finish = [&](const torch::Tensor& idx, const torch::Tensor& scores) {
      result.index_copy_(0, idx - begin, scores);
      return result;
    };
    const auto& blocks = q.network().blocks;
    const int nb = static_cast<int>(blocks.size());
    std::vector<Change> ch(nb);
    torch::Tensor idx = torch::arange(begin, end, torch::kInt64);
    {
      const Shape s = shapes[f.block];
      const int64_t c = f.index / (s.h * s.w), y = (f.index / s.w) % s.h, x = f.index % s.w;
      auto v = g.stored(f.block)
                   .slice(1, c, c + 1)
                   .slice(2, y, y + 1)
                   .slice(3, x, x + 1)
                   .index_select(0, idx)
                   .to(torch::kFloat32);
      v = flip_bits(v, f.bit, q.formats().act[f.block]);
      ch[f.block] = {true, {y, y + 1, x, x + 1}, c, c + 1, v,
                     torch::ones({idx.size(0)}, torch::kBool)};
    }
    for (int b = f.block + 1; b < nb; ++b) {
      const Block& blk = blocks[b];
      bool touched = false;
      for (int j : blk.inputs) touched |= j != Block::kNetworkInput && ch[j].active;
      if (!touched) continue;
      const bool last = b + 1 == nb;
      const ChannelPlan cp = channels(b, ch);
      Plan p;
      if (plan(b, ch, p)) {
        if (p.out.empty()) continue;  // the change falls outside every window
        auto inputs = [&](bool with_change) {
          std::vector<torch::Tensor> in;
          for (int j : blk.inputs)
            in.push_back(window(j, ch, p.in.y0, p.in.y1, p.in.x0, p.in.x1, idx, with_change,
                                p.fill, cp.in));
          return in;
        };
        auto now = q.forward_window(b, inputs(true), p.post_pad, cp.out);
        if (!last) {
          if (!settle(b, p.out, cp.out, now, ch, idx)) return result;
          continue;
        }
        // The last block: exact per-position numerators; their change adds to the scores.
        auto delta = (now - q.forward_window(b, inputs(false))).sum({2, 3});
        return finish(idx, g.scores().index_select(0, idx) + delta);
      }
      // Any other block: computed whole for the images still in play (a pooling block only on
      // the channels the change reached: it acts on each channel alone).
      const Channels only = blk.op == Op::Pool ? cp.out : Channels{};
      std::vector<torch::Tensor> in;
      for (int j : blk.inputs) {
        const Shape s = shape_of(j);
        in.push_back(window(j, ch, 0, s.h, 0, s.w, idx, true, 0, only));
      }
      auto out = q.forward_block(b, in);
      if (last) return finish(idx, out.flatten(1));
      if (!settle(b, {0, shapes[b].h, 0, shapes[b].w}, only, out, ch, idx)) return result;
    }
    return result;  // the change never reached the class scores
  }
};

IncrementalEngine::IncrementalEngine(const QuantizedNetwork& q, const GoldenRun& golden,
                                     FaultTarget target, const EngineOptions& o)
    : impl_(std::make_unique<Impl>(q, golden, target, o)), target_(target) {}

IncrementalEngine::~IncrementalEngine() = default;

torch::Tensor IncrementalEngine::scores(const std::vector<Fault>& faults) {
  if (faults.size() != 1 || target_ != FaultTarget::Activations)
    return impl_->reference.scores(faults);
  torch::NoGradGuard no_grad;
  const Fault& f = faults[0];
  check_fault(impl_->q, FaultTarget::Activations, f);
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < impl_->g.correct(); s += impl_->o.chunk)
    parts.push_back(impl_->chunk(f, s, std::min(impl_->g.correct(), s + impl_->o.chunk)));
  return parts.empty() ? impl_->g.scores().clone() : torch::cat(parts);
}

int64_t IncrementalEngine::failures(const std::vector<Fault>& faults) {
  return scores(faults).argmax(1).ne(impl_->g.correct_labels()).sum().item<int64_t>();
}

}  // namespace flipguard
