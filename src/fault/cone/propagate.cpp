// The cone engine's change propagation: a flipped code's change pushed stage by stage, in the
// network's topological order, as sparse lists of changed codes (one per site still to be read),
// until they all vanish, one is proven harmless, or the change reaches the scores.
#include "engine.hpp"

#include <algorithm>
#include <limits>

namespace flipguard {

using cone::kBoundEntries;
using cone::Kind;

void ConeEngine::Impl::accumulate(const Stage& s, const std::vector<Entry>& cur, Scratch& w) const {
  const int64_t K = s.pre.c, W = s.pre.w, G = s.groups, Kg = K / G, Cg = s.in.c / G;
  // Group g of position p: the Kg accumulators of its output channels, reached as one.
  auto add = [&](int32_t p, int64_t g, const int32_t* wrow, int32_t d) {
    const int32_t key = static_cast<int32_t>(p * G + g);
    if (!w.hit[key]) {
      w.hit[key] = 1;
      w.hits.push_back(key);
    }
    int32_t* dst = &w.delta[static_cast<size_t>(p * K + g * Kg)];
    for (int64_t k = 0; k < Kg; ++k) dst[k] += d * wrow[k];
  };
  if (s.kind == Kind::Linear) {
    for (const Entry& e : cur) {
      const int64_t flat = (int64_t{e.c} * s.in.h + e.y) * s.in.w + e.x;
      add(0, 0, &s.wt[flat * K], e.d);
    }
    return;
  }
  const int k = s.kernel;
  auto positions = [&](int32_t y, int32_t x, auto&& f) {
    for (int i = 0; i < k; ++i) {
      const int ny = y + s.pad - i * s.dil;
      if (ny < 0 || ny % s.stride) continue;
      const int oy = ny / s.stride;
      if (oy >= s.pre.h) continue;
      for (int j = 0; j < k; ++j) {
        const int nx = x + s.pad - j * s.dil;
        if (nx < 0 || nx % s.stride) continue;
        const int ox = nx / s.stride;
        if (ox >= W) continue;
        f(static_cast<int32_t>(oy * W + ox), i * k + j);
      }
    }
  };
  if (s.packed) {
    // Entries of one input position, as a vector of channel pairs, times each kernel tap.
    const int64_t C2 = (s.in.c + 1) / 2;
    for (size_t a = 0; a < cur.size();) {
      size_t b = a;
      while (b < cur.size() && cur[b].y == cur[a].y && cur[b].x == cur[a].x) ++b;
      w.pairs.clear();
      for (size_t t = a; t < b; ++t) {
        const int32_t cp = cur[t].c / 2;
        if (!w.paired[cp]) {
          w.paired[cp] = 1;
          w.pairs.push_back(cp);
        }
        w.channel[cur[t].c] = static_cast<int16_t>(w.channel[cur[t].c] + cur[t].d);
      }
      w.packed.clear();
      for (int32_t cp : w.pairs) {
        w.packed.push_back(static_cast<int32_t>(
            static_cast<uint16_t>(w.channel[2 * cp]) |
            (static_cast<uint32_t>(static_cast<uint16_t>(w.channel[2 * cp + 1])) << 16)));
        w.channel[2 * cp] = w.channel[2 * cp + 1] = 0;
        w.paired[cp] = 0;
      }
      const int n = static_cast<int>(w.pairs.size());
      positions(cur[a].y, cur[a].x, [&](int32_t p, int tap) {
        if (!w.hit[p]) {
          w.hit[p] = 1;
          w.hits.push_back(p);
        }
        int32_t* dst = &w.delta[static_cast<size_t>(p) * K];
        const int16_t* wt = &s.wt16[static_cast<size_t>(tap * C2 * K * 2)];
        kernels.gemv(dst, wt, w.packed.data(), w.pairs.data(), n, K);
      });
      a = b;
    }
    return;
  }
  for (const Entry& e : cur) {
    const int64_t g = e.c / Cg;
    positions(e.y, e.x, [&](int32_t p, int tap) {
      add(p, g, &s.wt[(int64_t{e.c} * k * k + tap) * Kg], e.d);
    });
  }
}

template <class Out>
void ConeEngine::Impl::emit(const Stage& s, const int64_t* acc, const int32_t* acc32,
                            const int32_t* gold, const int32_t* gold32, Scratch& w,
                            Out&& out) const {
  const int64_t K = s.pre.c, HW = s.out.h * s.out.w, G = s.groups, Kg = K / G;
  // Position-major golden codes exist only for sites rounded by a shift with int32 accumulators:
  // then the kernels round (eight channels at a time with AVX2). A reached key is a position and
  // group (position x G + group): the channels [g Kg, (g + 1) Kg) of the position.
  const bool shifted = gold32 != nullptr;
  if (!s.post_max && shifted) {
    for (int32_t key : w.hits) {
      const int32_t p = static_cast<int32_t>(key / G);
      const int64_t k0 = key % G * Kg, at = int64_t{p} * K + k0;
      const int n = kernels.position_shift(&w.delta[at], acc32 + at, gold32 + at, Kg, s.relu,
                                           -s.rq.shift, static_cast<int32_t>(s.rq.lo),
                                           static_cast<int32_t>(s.rq.hi), w.ks.data(), w.ds.data());
      const int32_t y = p / static_cast<int32_t>(s.out.w), x = p % static_cast<int32_t>(s.out.w);
      for (int t = 0; t < n; ++t) out(static_cast<int32_t>(k0 + w.ks[t]), y, x, w.ds[t]);
      w.hit[key] = 0;
    }
    w.hits.clear();
    return;
  }
  if (!s.post_max) {
    for (int32_t key : w.hits) {
      const int64_t p = key / G, k0 = key % G * Kg;
      int32_t* dv = &w.delta[static_cast<size_t>(p * K)];
      const int64_t* a = &acc[p * K];
      for (int64_t k = k0; k < k0 + Kg; ++k) {
        if (dv[k] == 0) continue;
        const int64_t before = act(s, a[k]), after = act(s, a[k] + dv[k]);
        dv[k] = 0;
        if (before == after) continue;
        const int64_t code = s.rq(after), old = gold[k * HW + p];
        if (code != old)
          out(static_cast<int32_t>(k), static_cast<int32_t>(p / s.out.w),
              static_cast<int32_t>(p % s.out.w), static_cast<int32_t>(code - old));
      }
      w.hit[key] = 0;
    }
    w.hits.clear();
    return;
  }
  // Max pooling behind: the pooled positions (and groups) whose windows hold a reached position.
  const int64_t PW = s.pre.w;
  for (int32_t key : w.hits) {
    const int64_t p = key / G, g = key % G;
    const auto [py0, py1] = s.windows_of(p / PW, s.out.h);
    const auto [px0, px1] = s.windows_of(p % PW, s.out.w);
    for (int64_t py = py0; py <= py1; ++py)
      for (int64_t px = px0; px <= px1; ++px) {
        const int32_t c = static_cast<int32_t>((py * s.out.w + px) * G + g);
        if (!w.cell[c]) {
          w.cell[c] = 1;
          w.cells.push_back(c);
        }
      }
  }
  // The new codes of a cell's group from the pooled maxima of its channels (`best`, from channel
  // k0 on), where a position of the window changed (`moved`).
  auto flush = [&](int64_t c, int64_t k0, const auto* best, const auto* moved) {
    const int32_t py = static_cast<int32_t>(c / s.out.w), px = static_cast<int32_t>(c % s.out.w);
    for (int64_t k = 0; k < Kg; ++k) {
      if (!moved[k]) continue;
      const int64_t code = s.rq(best[k]), old = gold[(k0 + k) * HW + c];
      if (code != old)
        out(static_cast<int32_t>(k0 + k), py, px, static_cast<int32_t>(code - old));
    }
  };
  if (acc32) {
    // int32 accumulators: the pooled maximum of every channel of a cell, vectorized.
    int32_t* best = w.best32.data();
    int32_t* any = w.any32.data();
    const int32_t floor = s.relu ? 0 : std::numeric_limits<int32_t>::min();
    for (int32_t key : w.cells) {
      const int64_t c = key / G, g = key % G, k0 = g * Kg;
      const int64_t py = c / s.out.w, px = c % s.out.w;
      std::fill_n(best, Kg, std::numeric_limits<int32_t>::min());
      std::fill_n(any, Kg, 0);
      for (int i = 0; i < s.pk; ++i)
        for (int j = 0; j < s.pk; ++j) {
          const int64_t p = (py * s.ps + i) * PW + px * s.ps + j, at = p * K + k0;
          kernels.max_into(best, any, &acc32[at], w.hit[p * G + g] ? &w.delta[at] : nullptr, Kg,
                           floor);
        }
      if (shifted) {
        const int n = kernels.cell_shift(best, any, gold32 + c * K + k0, Kg, -s.rq.shift,
                                         static_cast<int32_t>(s.rq.lo),
                                         static_cast<int32_t>(s.rq.hi), w.ks.data(), w.ds.data());
        for (int t = 0; t < n; ++t)
          out(static_cast<int32_t>(k0 + w.ks[t]), static_cast<int32_t>(py),
              static_cast<int32_t>(px), w.ds[t]);
      } else {
        flush(c, k0, best, any);
      }
      w.cell[key] = 0;
    }
  } else {
    int64_t* best = w.best.data();
    uint8_t* changed = w.changed.data();
    for (int32_t key : w.cells) {
      const int64_t c = key / G, g = key % G, k0 = g * Kg;
      const int64_t py = c / s.out.w, px = c % s.out.w;
      std::fill_n(best, Kg, std::numeric_limits<int64_t>::min());
      std::fill_n(changed, Kg, 0);
      // Branch-free over channels: the pooled maximum of every channel of the cell.
      for (int i = 0; i < s.pk; ++i)
        for (int j = 0; j < s.pk; ++j) {
          const int64_t p = (py * s.ps + i) * PW + px * s.ps + j;
          const int64_t* a = &acc[p * K + k0];
          if (w.hit[p * G + g]) {
            const int32_t* dv = &w.delta[p * K + k0];
            for (int64_t k = 0; k < Kg; ++k) {
              changed[k] |= dv[k] != 0;
              best[k] = std::max(best[k], act(s, a[k] + dv[k]));
            }
          } else {
            for (int64_t k = 0; k < Kg; ++k) best[k] = std::max(best[k], act(s, a[k]));
          }
        }
      flush(c, k0, best, changed);
      w.cell[key] = 0;
    }
  }
  w.cells.clear();
  for (int32_t key : w.hits) {
    std::fill_n(&w.delta[static_cast<size_t>(key / G * K + key % G * Kg)], Kg, 0);
    w.hit[key] = 0;
  }
  w.hits.clear();
}

bool ConeEngine::Impl::score(const Stage& s, const int64_t* acc, const int64_t* golden,
                             int64_t label, Scratch& w) const {
  const int64_t K = s.pre.c, HW = s.pre.h * s.pre.w, G = s.groups, Kg = K / G;
  std::fill(w.dscore.begin(), w.dscore.end(), 0);
  for (int32_t key : w.hits) {
    const int64_t p = key / G, k0 = key % G * Kg;
    int32_t* dv = &w.delta[static_cast<size_t>(p * K)];
    const int64_t* a = &acc[p * K];
    for (int64_t k = k0; k < k0 + Kg; ++k) {
      if (dv[k] == 0) continue;
      const int64_t change = act(s, a[k] + dv[k]) - act(s, a[k]);
      dv[k] = 0;
      w.dscore[s.post_gap ? k : k * HW + p] += change;
    }
    w.hit[key] = 0;
  }
  w.hits.clear();
  return argmax(golden, w.dscore) != label;
}

bool ConeEngine::Impl::summed_fails(const Stage& s, const int64_t* golden, int64_t label,
                                    Scratch& w) const {
  const int64_t K = s.pre.c;
  std::fill(w.dscore.begin(), w.dscore.end(), 0);
  for (int64_t c = 0; c < s.in.c; ++c) {
    const int64_t d = w.csum[c];
    if (d == 0) continue;
    w.csum[c] = 0;
    const int32_t* row = &s.wt[c * K];  // 1x1 taps: [C][K] for both block kinds
    for (int64_t k = 0; k < K; ++k) w.dscore[k] += d * row[k];
  }
  return argmax(golden, w.dscore) != label;
}

int64_t ConeEngine::Impl::argmax(const int64_t* golden, const std::vector<int64_t>& dscore) const {
  // First maximum, as torch's argmax.
  int64_t best = 0;
  int64_t top = golden[0] + dscore[0];
  for (int64_t k = 1; k < classes; ++k) {
    const int64_t v = golden[k] + dscore[k];
    if (v > top) {
      top = v;
      best = k;
    }
  }
  return best;
}

void ConeEngine::Impl::add(const Stage& s, const int64_t* sum, const int32_t* gold,
                           Scratch& w) const {
  const int64_t C = s.out.c, W = s.out.w, HW = s.out.h * W, N = C * HW;
  // Elements are numbered position-major here, so that the changes come out position by position
  // (channels ascending), as the paired multiply-add of a convolution reading them wants them.
  for (size_t t = 0; t < s.inputs.size(); ++t) {
    const int64_t unit = int64_t{1} << s.align[t];
    for (const Entry& e : changes(w, s.inputs[t])) {
      const int32_t at = static_cast<int32_t>((int64_t{e.y} * W + e.x) * C + e.c);
      if (!w.cell[at]) {
        w.cell[at] = 1;
        w.cells.push_back(at);
      }
      w.wide[at] += e.d * unit;
    }
  }
  // In order: by a scan of the marks when they are dense, else by sorting.
  if (static_cast<int64_t>(w.cells.size()) * 8 > N) {
    w.cells.clear();
    for (int32_t at = 0; at < static_cast<int32_t>(N); ++at)
      if (w.cell[at]) w.cells.push_back(at);
  } else {
    std::sort(w.cells.begin(), w.cells.end());
  }
  for (int32_t at : w.cells) {
    w.cell[at] = 0;
    const int64_t dn = w.wide[at];
    w.wide[at] = 0;
    if (dn == 0) continue;  // the changes of the inputs cancel
    const int64_t p = at / C, c = at % C, i = c * HW + p;  // i: channel-major
    const int64_t before = act(s, sum[i]), after = act(s, sum[i] + dn);
    if (before == after) continue;
    const int64_t code = s.rq(after), old = gold[i];
    if (code != old)
      w.next.push_back({static_cast<int32_t>(c), static_cast<int32_t>(p / W),
                        static_cast<int32_t>(p % W), static_cast<int32_t>(code - old)});
  }
  w.cells.clear();
}

void ConeEngine::Impl::pool(const Stage& s, const std::vector<Entry>& cur, const int32_t* in,
                            const int32_t* gold, const int64_t* sums, Scratch& w) const {
  const int64_t HW = s.out.h * s.out.w, IHW = s.in.h * s.in.w;
  if (s.kind == Kind::GapPool) {
    for (const Entry& e : cur) w.dense[e.c] += e.d;  // per channel
    for (const Entry& e : cur) {
      const int32_t sum = w.dense[e.c];
      if (sum == std::numeric_limits<int32_t>::min()) continue;  // channel already done
      w.dense[e.c] = std::numeric_limits<int32_t>::min();
      if (sum == 0) continue;
      const int64_t code = s.rq(act(s, sums[e.c] + sum)), old = gold[e.c];
      if (code != old) w.next.push_back({e.c, 0, 0, static_cast<int32_t>(code - old)});
    }
    for (const Entry& e : cur) w.dense[e.c] = 0;
    return;
  }
  for (const Entry& e : cur) w.dense[int64_t{e.c} * IHW + e.y * s.in.w + e.x] = e.d;
  for (const Entry& e : cur) {
    const auto [py0, py1] = s.windows_of(e.y, s.out.h);
    const auto [px0, px1] = s.windows_of(e.x, s.out.w);
    for (int64_t py = py0; py <= py1; ++py)
      for (int64_t px = px0; px <= px1; ++px) {
        const int32_t c = static_cast<int32_t>(e.c * HW + py * s.out.w + px);
        if (w.cell[c]) continue;
        w.cell[c] = 1;
        w.cells.push_back(c);
        int64_t best = std::numeric_limits<int64_t>::min();
        for (int i = 0; i < s.pk; ++i)
          for (int j = 0; j < s.pk; ++j) {
            const int64_t idx = e.c * IHW + (py * s.ps + i) * s.in.w + px * s.ps + j;
            best = std::max<int64_t>(best, in[idx] + w.dense[idx]);
          }
        const int64_t code = s.rq(act(s, best)), old = gold[c];
        if (code != old)
          w.next.push_back({e.c, static_cast<int32_t>(py), static_cast<int32_t>(px),
                            static_cast<int32_t>(code - old)});
      }
  }
  for (int32_t c : w.cells) w.cell[c] = 0;
  w.cells.clear();
  for (const Entry& e : cur) w.dense[int64_t{e.c} * IHW + e.y * s.in.w + e.x] = 0;
}

bool ConeEngine::Impl::fails(const Decoded& f, const ChunkData& d, int64_t i, Scratch& w) const {
  const int nb = static_cast<int>(stages.size());
  const int64_t* golden = d.scores.data_ptr<int64_t>() + i * classes;
  const int64_t label = d.labels.data_ptr<int64_t>()[i];
  ++w.stats.pairs;
  for (auto& l : w.live) l.clear();
  {
    const Shape& sh = stages[f.site].out;
    const int32_t old =
        d.codes[f.site]
            .data_ptr<int32_t>()[i * sh.numel() + (int64_t{f.c} * sh.h + f.y) * sh.w + f.x];
    const FixedPoint& fmt = q.formats().act[f.site];
    const int32_t now = (*f.flip)[old - fmt.min_code()];
    w.live[f.site].assign(1, {f.c, f.y, f.x, now - old});
  }
  if (last_reader[f.site] < 0) {  // a site nothing reads
    ++w.stats.vanished;
    return false;
  }
  // Sites whose change is not empty and still has a reader to come. In a chain that is only the
  // site before the block at hand; along a shortcut, the shortcut's site too until its addition.
  int active = 1;
  for (int b = f.site + 1; b < nb; ++b) {
    const Stage& s = stages[b];
    const std::vector<Entry>& cur = changes(w, s.inputs[0]);
    const bool reached =
        !cur.empty() || (s.kind == Kind::Add &&
                         std::any_of(s.inputs.begin(), s.inputs.end(),
                                     [&](int j) { return !changes(w, j).empty(); }));
    if (!reached) continue;
    // The bound is worth its cost only for small changes; larger ones hardly ever pass it.
    if (o.prune && s.bound && cur.size() <= kBoundEntries && harmless(s, cur, golden, label, w)) {
      ++w.stats.pruned;
      return false;
    }
    w.next.clear();
    const int64_t* acc =
        d.acc[b].defined() ? d.acc[b].data_ptr<int64_t>() + i * s.pre.numel() : nullptr;
    if (s.summed) {
      ++w.stats.scored;
      for (const Entry& e : cur) w.csum[e.c] += e.d;
      return summed_fails(s, golden, label, w);
    }
    if (s.kind == Kind::Conv || s.kind == Kind::Linear) {
      accumulate(s, cur, w);
      if (s.last) {
        ++w.stats.scored;
        return score(s, acc, golden, label, w);
      }
      const int32_t* gold = d.codes[b].data_ptr<int32_t>() + i * s.out.numel();
      // Without vector instructions, pooling runs on the int64 accumulators (the plain path).
      const int32_t* acc32 = o.simd && d.acc32[b].defined()
                                 ? d.acc32[b].data_ptr<int32_t>() + i * s.pre.numel()
                                 : nullptr;
      const int32_t* gold32 = acc32 && d.gold32[b].defined()
                                  ? d.gold32[b].data_ptr<int32_t>() + i * s.out.numel()
                                  : nullptr;
      if (s.fused && d.acc32[b].defined()) {
        const int64_t at = i * s.pre.numel();
        kernels.fused_sum(w.hits.data(), w.hits.size(), w.delta.data(),
                          d.acc32[b].data_ptr<int32_t>() + at, d.gold32[b].data_ptr<int32_t>() + at,
                          s.pre.c, s.relu, -s.rq.shift, static_cast<int32_t>(s.rq.lo),
                          static_cast<int32_t>(s.rq.hi), w.csum32.data());
        for (int32_t p : w.hits) w.hit[p] = 0;
        w.hits.clear();
        for (int64_t c = 0; c < s.pre.c; ++c) {
          w.csum[c] += w.csum32[c];
          w.csum32[c] = 0;
        }
        ++w.stats.scored;
        return summed_fails(stages[b + 1], golden, label, w);
      }
      if (s.into_sum) {
        // Straight into the per-channel sums of the last block.
        int64_t changed = 0;
        emit(s, acc, acc32, gold, gold32, w, [&](int32_t c, int32_t, int32_t, int32_t dc) {
          w.csum[c] += dc;
          ++changed;
        });
        if (changed == 0) {
          ++w.stats.vanished;
          return false;
        }
        ++w.stats.scored;
        return summed_fails(stages[b + 1], golden, label, w);
      }
      emit(s, acc, acc32, gold, gold32, w, [&](int32_t c, int32_t y, int32_t x, int32_t dc) {
        w.next.push_back({c, y, x, dc});
      });
    } else if (s.kind == Kind::Add) {
      add(s, d.sums[b].data_ptr<int64_t>() + i * s.out.numel(),
          d.codes[b].data_ptr<int32_t>() + i * s.out.numel(), w);
    } else {
      pool(s, cur, d.codes[s.inputs[0]].data_ptr<int32_t>() + i * s.in.numel(),
           d.codes[b].data_ptr<int32_t>() + i * s.out.numel(),
           d.sums[b].defined() ? d.sums[b].data_ptr<int64_t>() + i * s.in.c : nullptr, w);
    }
    // w.next is the change of site b; the changes whose last reader this was are done.
    std::swap(w.live[b], w.next);
    if (!w.live[b].empty()) {
      if (last_reader[b] > b) ++active;
      else w.live[b].clear();
    }
    for (int j : s.inputs)
      if (j != Block::kNetworkInput && last_reader[j] == b && !w.live[j].empty()) {
        w.live[j].clear();
        --active;
      }
    if (active == 0) {
      ++w.stats.vanished;
      return false;
    }
  }
  return false;  // not reached: the last block is weighted
}

}  // namespace flipguard
