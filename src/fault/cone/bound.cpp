// The cone engine's pruning bound: a conservative bound on how far a change of a site read by
// the convolution before the last block can move the class-score differences.
#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace flipguard {

using cone::Kind;

void ConeEngine::Impl::build_bound(Stage& s, int last) {
  const Stage& l = stages[last];
  if (s.kind != Kind::Conv || l.relu) return;
  // The bound follows one path, s -> last, with dense weights: off for grouped convolutions and
  // where the last block reads anything else (a change could reach it another way).
  if (s.groups != 1 || l.groups != 1 || l.inputs != std::vector<int>{last - 1}) return;
  if (l.kind == Kind::Conv) {
    if (l.kernel != 1 || l.stride != 1 || l.pad != 0) return;
    if (!l.post_gap && (l.pre.h != 1 || l.pre.w != 1)) return;
  } else if (l.kind != Kind::Linear || l.in.h != 1 || l.in.w != 1) {
    return;
  }
  const int64_t C = s.in.c, K = s.pre.c, L = classes, k2 = int64_t{s.kernel} * s.kernel;
  // wabs[j][c]: sum of |weights| from input channel c to output channel j.
  std::vector<double> wabs(static_cast<size_t>(K * C), 0.0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < k2; ++t)
      for (int64_t j = 0; j < K; ++j) wabs[j * C + c] += std::abs(s.wt[(c * k2 + t) * K + j]);
  // The last block's weights: wt is [K][classes] (input channel major).
  auto v = [&](int64_t a, int64_t b, int64_t j) {
    return std::abs(static_cast<double>(l.wt[j * L + a]) - l.wt[j * L + b]);
  };
  s.overlap = s.post_max ? static_cast<int>(ceil_div(s.pk, s.ps) * ceil_div(s.pk, s.ps)) : 1;
  const double scale = s.rq.scale() * s.overlap;
  s.lin.assign(static_cast<size_t>(C * L * L), 0.0);
  s.slack.assign(static_cast<size_t>(L * L), 0.0);
  for (int64_t a = 0; a < L; ++a)
    for (int64_t b = 0; b < L; ++b) {
      if (a == b) continue;
      for (int64_t j = 0; j < K; ++j) {
        const double vj = v(a, b, j);
        s.slack[a * L + b] += vj;
        for (int64_t c = 0; c < C; ++c) s.lin[(c * L + a) * L + b] += scale * vj * wabs[j * C + c];
      }
    }
  s.bound = true;
}

bool ConeEngine::Impl::harmless(const Stage& s, const std::vector<Entry>& cur, const int64_t* score,
                                int64_t label, Scratch& w) const {
  const int64_t L = classes;
  std::vector<double>& bound = w.bound;
  std::fill(bound.begin(), bound.end(), 0.0);
  int32_t y0 = std::numeric_limits<int32_t>::max(), y1 = -1, x0 = y0, x1 = -1;
  for (const Entry& e : cur) {
    const double ad = std::abs(e.d);
    const double* lin = &s.lin[(e.c * L + label) * L];
    for (int64_t k = 0; k < L; ++k) bound[k] += ad * lin[k];
    y0 = std::min(y0, e.y);
    y1 = std::max(y1, e.y);
    x0 = std::min(x0, e.x);
    x1 = std::max(x1, e.x);
  }
  // Output positions the change can reach: the span of the convolution, then of its pooling.
  auto reach = [&](int64_t a0, int64_t a1, int64_t pre, int64_t out) -> double {
    const int64_t r = int64_t{s.dil} * (s.kernel - 1);
    int64_t o0 = std::max<int64_t>(0, ceil_div(a0 + s.pad - r, s.stride));
    int64_t o1 = std::min<int64_t>(pre - 1, floor_div(a1 + s.pad, s.stride));
    if (s.post_max) {
      o0 = std::max<int64_t>(0, ceil_div(o0 - s.pk + 1, s.ps));
      o1 = std::min<int64_t>(out - 1, floor_div(o1, s.ps));
    }
    return static_cast<double>(std::max<int64_t>(0, o1 - o0 + 1));
  };
  const double positions = reach(y0, y1, s.pre.h, s.out.h) * reach(x0, x1, s.pre.w, s.out.w);
  const double* slack = &s.slack[label * L];
  for (int64_t k = 0; k < L; ++k) {
    if (k == label) continue;
    // Floating-point error of the sums is far below this margin of safety.
    const double b = (bound[k] + slack[k] * positions) * (1 + 1e-9) + 1e-6;
    if (!(static_cast<double>(score[label] - score[k]) > b)) return false;
  }
  return true;
}

}  // namespace flipguard
