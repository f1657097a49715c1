// The incremental engine: recomputes only the cone of influence of one flipped neuron.
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>

#include "int_div.hpp"

#include <algorithm>
#include <utility>

namespace flipguard {

namespace {


/// A window of a block's output: rows [y0, y1), columns [x0, x1), every channel.
struct Rect {
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;
};

/// A block whose output differs from the golden run: where, and the new codes there for the
/// images still in play.
struct Change {
  bool active = false;
  Rect rect;
  torch::Tensor values;   // images x C x (y1 - y0) x (x1 - x0), float32 codes
  torch::Tensor differs;  // images: whether the image's codes differ anywhere in the window
};

/// The network with convolutions unpadded (a window is computed from an explicitly padded patch)
/// and the last block without its pooling (its per-position accumulator is summed here).
Network patch_network(const Network& net) {
  Network p = net.clone();
  for (auto& b : p.blocks)
    if (b.op == Op::Conv) b.padding = 0;
  p.blocks.back().post = PoolSpec{};
  return p;
}

}  // namespace

struct IncrementalEngine::Impl {
  const QuantizedNetwork& q;
  const GoldenRun& g;
  EngineOptions o;
  ReferenceEngine reference;
  // Null when the unpadded network is not a valid one (a fully-connected block after padded
  // convolutions expects their padded shape): then every block is computed whole.
  std::unique_ptr<QuantizedNetwork> patch;
  std::vector<Shape> shapes, pre_post;
  Shape input;
  std::vector<int> last_reader;  // per block: the last block that reads it

  Impl(const QuantizedNetwork& q_, const GoldenRun& g_, FaultTarget t, const EngineOptions& o_)
      : q(q_), g(g_), o(o_), reference(q_, g_, t, o_) {
    try {
      patch = std::make_unique<QuantizedNetwork>(patch_network(q_.network()), q_.formats());
    } catch (const Error&) {
      patch.reset();
    }
    shapes = q.network().shapes(&pre_post);
    input = q.network().input;
    const auto& blocks = q.network().blocks;
    last_reader.assign(blocks.size(), -1);
    for (int b = 0; b < static_cast<int>(blocks.size()); ++b)
      for (int j : blocks[b].inputs)
        if (j != Block::kNetworkInput) last_reader[j] = std::max(last_reader[j], b);
  }

  Shape shape_of(int j) const { return j == Block::kNetworkInput ? input : shapes[j]; }

  /// Codes of block j's output over rows [r0, r1) and columns [c0, c1) (zero outside the map),
  /// for images `idx`, with the change of block j where it has one.
  torch::Tensor window(int j, const std::vector<Change>& ch, int64_t r0, int64_t r1, int64_t c0,
                       int64_t c1, const torch::Tensor& idx, bool with_change = true) const {
    const Shape s = shape_of(j);
    auto out = torch::zeros({idx.size(0), s.c, r1 - r0, c1 - c0}, torch::kFloat32);
    const int64_t a0 = std::max<int64_t>(r0, 0), a1 = std::min(r1, s.h);
    const int64_t b0 = std::max<int64_t>(c0, 0), b1 = std::min(c1, s.w);
    if (a0 < a1 && b0 < b1)
      out.slice(2, a0 - r0, a1 - r0).slice(3, b0 - c0, b1 - c0)
          .copy_(g.stored(j).slice(2, a0, a1).slice(3, b0, b1).index_select(0, idx));
    if (with_change && j != Block::kNetworkInput && ch[j].active) {
      const Rect& r = ch[j].rect;
      const int64_t y0 = std::max(r.y0, r0), y1 = std::min(r.y1, r1);
      const int64_t x0 = std::max(r.x0, c0), x1 = std::min(r.x1, c1);
      if (y0 < y1 && x0 < x1)
        out.slice(2, y0 - r0, y1 - r0).slice(3, x0 - c0, x1 - c0)
            .copy_(ch[j].values.slice(2, y0 - r.y0, y1 - r.y0).slice(3, x0 - r.x0, x1 - r.x0));
    }
    return out;
  }

  /// Records block b's new codes over `rect` as a change, shrunk to the positions where some image
  /// differs from the golden run; forgets changes that no later block reads; and drops the images
  /// in which no remaining change differs. Returns false when no image is left.
  bool settle(int b, Rect rect, const torch::Tensor& values, std::vector<Change>& ch,
              torch::Tensor& idx) {
    const auto gold = g.stored(b)
                          .slice(2, rect.y0, rect.y1)
                          .slice(3, rect.x0, rect.x1)
                          .index_select(0, idx)
                          .to(torch::kFloat32);
    const auto diff = values.ne(gold);
    const auto differs = diff.flatten(1).any(1);
    ch[b].active = differs.any().item<bool>();
    if (ch[b].active) {
      const auto where = diff.any(0).any(0);  // h x w
      const auto rows = where.any(1).nonzero().flatten(), cols = where.any(0).nonzero().flatten();
      const int64_t ry0 = rows.min().item<int64_t>(), ry1 = rows.max().item<int64_t>() + 1;
      const int64_t cx0 = cols.min().item<int64_t>(), cx1 = cols.max().item<int64_t>() + 1;
      ch[b].rect = {rect.y0 + ry0, rect.y0 + ry1, rect.x0 + cx0, rect.x0 + cx1};
      ch[b].values = values.slice(2, ry0, ry1).slice(3, cx0, cx1).contiguous();
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

  /// Pre-pooling output positions [o0, o1) of convolution b that read input rows [a0, a1).
  static std::pair<int64_t, int64_t> conv_span(const Block& blk, int64_t a0, int64_t a1, int64_t n) {
    const int64_t reach = int64_t{blk.dilation} * (blk.kernel - 1);
    return {std::max<int64_t>(0, ceil_div(a0 + blk.padding - reach, blk.stride)),
            std::min<int64_t>(n, floor_div(a1 - 1 + blk.padding, blk.stride) + 1)};
  }

  /// Whether block b's change can be computed on a window.
  bool windowed(int b) const {
    if (!patch) return false;
    const Block& blk = q.network().blocks[b];
    if (blk.op != Op::Conv || blk.inputs.size() != 1) return false;
    const bool last = b + 1 == static_cast<int>(q.network().blocks.size());
    if (last) return blk.post.kind == PoolKind::GlobalAvg;
    return blk.post.kind == PoolKind::None ||
           (blk.post.kind == PoolKind::Max && blk.post.padding == 0 && !blk.post.ceil_mode);
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
      auto v = g.stored(f.block).slice(2, y, y + 1).slice(3, x, x + 1).index_select(0, idx)
                   .to(torch::kFloat32);
      auto col = v.select(1, c);
      col.copy_(flip_bits(col, f.bit, q.formats().act[f.block]));
      ch[f.block] = {true, {y, y + 1, x, x + 1}, v, torch::ones({idx.size(0)}, torch::kBool)};
    }
    for (int b = f.block + 1; b < nb; ++b) {
      const Block& blk = blocks[b];
      bool touched = false;
      for (int j : blk.inputs) touched |= j != Block::kNetworkInput && ch[j].active;
      if (!touched) continue;
      const bool last = b + 1 == nb;
      if (windowed(b)) {
        const int j = blk.inputs[0];
        const Rect& r = ch[j].rect;
        const Shape pre = pre_post[b];
        auto [oy0, oy1] = conv_span(blk, r.y0, r.y1, pre.h);
        auto [ox0, ox1] = conv_span(blk, r.x0, r.x1, pre.w);
        // Output window (after pooling) and the pre-pooling window that computes it.
        int64_t qy0 = oy0, qy1 = oy1, qx0 = ox0, qx1 = ox1, py0 = oy0, py1 = oy1, px0 = ox0, px1 = ox1;
        if (!last && blk.post.kind == PoolKind::Max) {
          const int64_t k2 = blk.post.kernel, s2 = blk.post.stride;
          const Shape out = shapes[b];
          qy0 = std::max<int64_t>(0, ceil_div(oy0 - k2 + 1, s2));
          qy1 = std::min<int64_t>(out.h, floor_div(oy1 - 1, s2) + 1);
          qx0 = std::max<int64_t>(0, ceil_div(ox0 - k2 + 1, s2));
          qx1 = std::min<int64_t>(out.w, floor_div(ox1 - 1, s2) + 1);
          py0 = qy0 * s2;
          py1 = (qy1 - 1) * s2 + k2;
          px0 = qx0 * s2;
          px1 = (qx1 - 1) * s2 + k2;
        }
        if (qy0 >= qy1 || qx0 >= qx1) continue;  // the change falls outside every window
        const int64_t reach = int64_t{blk.dilation} * (blk.kernel - 1);
        const int64_t r0 = py0 * blk.stride - blk.padding, r1 = (py1 - 1) * blk.stride - blk.padding + reach + 1;
        const int64_t c0 = px0 * blk.stride - blk.padding, c1 = (px1 - 1) * blk.stride - blk.padding + reach + 1;
        auto now = patch->forward_block(b, {window(j, ch, r0, r1, c0, c1, idx)});
        if (!last) {
          if (!settle(b, {qy0, qy1, qx0, qx1}, now, ch, idx)) return result;
          continue;
        }
        // The last block: exact per-position accumulators; their change adds to the scores.
        auto before = patch->forward_block(b, {window(j, ch, r0, r1, c0, c1, idx, false)});
        auto delta = (now - before).sum({2, 3});
        return finish(idx, g.scores().index_select(0, idx) + delta);
      }
      // Any other block: computed whole for the images still in play.
      std::vector<torch::Tensor> in;
      for (int j : blk.inputs) {
        const Shape s = shape_of(j);
        in.push_back(window(j, ch, 0, s.h, 0, s.w, idx));
      }
      auto out = q.forward_block(b, in);
      if (last) return finish(idx, out.flatten(1));
      if (!settle(b, {0, shapes[b].h, 0, shapes[b].w}, out, ch, idx)) return result;
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
