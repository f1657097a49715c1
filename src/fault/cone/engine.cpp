// The cone engine: chunks of golden data, fault decoding, the workers, and the public class.
#include <flipguard/error.hpp>
#include <flipguard/parallel.hpp>

#include "engine.hpp"

#include <algorithm>

namespace flipguard {

using cone::ChunkData;
using cone::Kind;

ConeEngine::Impl::Impl(const QuantizedNetwork& q_, const GoldenRun& g_, FaultTarget t,
                       const EngineOptions& o_)
    : q(q_), g(g_), target(t), o(o_), incremental(q_, g_, t, o_), kernels(cone_kernels(o_.simd)) {
  try {
    build();
  } catch (const Error& e) {
    unsupported = e.what();
    stages.clear();
  }
}

bool ConeEngine::Impl::accepts(const std::vector<std::vector<Fault>>& sets) const {
  if (!unsupported.empty() || target != FaultTarget::Activations) return false;
  return std::all_of(sets.begin(), sets.end(), [](const auto& s) { return s.size() == 1; });
}

const std::vector<int32_t>* ConeEngine::Impl::flip_table(int site, int bit) {
  std::lock_guard<std::mutex> lock(m);
  auto& t = flips[{site, bit}];
  if (t.empty()) {
    const FixedPoint& f = q.formats().act[site];
    for (int64_t c = f.min_code(); c <= f.max_code(); ++c)
      t.push_back(static_cast<int32_t>(flip_bit(c, bit, f)));
  }
  return &t;
}

ChunkData ConeEngine::Impl::prepare(int64_t begin, int64_t end, int first_site) const {
  torch::NoGradGuard no_grad;
  ChunkData d;
  d.n = end - begin;
  const int nb = static_cast<int>(stages.size());
  d.codes.resize(nb);
  d.acc.resize(nb);
  d.sums.resize(nb);
  // Golden codes of every site a fault can change, and of every input of an addition it reaches
  // (a shortcut may come from before the first faulty site).
  std::vector<bool> load(static_cast<size_t>(nb), false);
  for (int b = first_site; b + 1 < nb; ++b) load[b] = true;
  for (int b = first_site + 1; b < nb; ++b)
    if (stages[b].kind == Kind::Add)
      for (int j : stages[b].inputs) load[j] = true;
  for (int b = 0; b + 1 < nb; ++b)
    if (load[b]) d.codes[b] = g.stored(b).slice(0, begin, end).to(torch::kInt32).contiguous();
  for (int b = first_site + 1; b < nb; ++b) {
    const Stage& s = stages[b];
    // Only a block reading a site at or after the first faulty one can see a change.
    const auto reached = [&](int j) { return j >= first_site; };
    if (!std::any_of(s.inputs.begin(), s.inputs.end(), reached)) continue;
    const torch::Tensor& in = d.codes[s.inputs[0]];
    if (s.kind == Kind::Conv || s.kind == Kind::Linear)
      d.acc[b] = q.accumulator(b, in.to(torch::kFloat32))
                     .permute({0, 2, 3, 1})
                     .to(torch::kInt64)
                     .contiguous();
    if (s.kind == Kind::GapPool) d.sums[b] = in.to(torch::kInt64).sum({2, 3}).contiguous();
    if (s.kind == Kind::Add) {
      torch::Tensor sum = torch::zeros_like(in, torch::kInt64);
      for (size_t t = 0; t < s.inputs.size(); ++t)
        sum += d.codes[s.inputs[t]].to(torch::kInt64) * (int64_t{1} << s.align[t]);
      d.sums[b] = sum.contiguous();
    }
  }
  d.acc32.resize(nb);
  d.gold32.resize(nb);
  for (int b = first_site + 1; b + 1 < nb; ++b) {
    const Stage& s = stages[b];
    if (!(s.shifted() || (s.kind == Kind::Conv && s.post_max)) || !d.acc[b].defined() || d.n == 0)
      continue;
    // a + delta (+ half an LSB when rounded by a shift) must stay inside int32.
    const int64_t half = s.by_shift ? int64_t{1} << (-s.rq.shift - 1) : 0;
    const int64_t room = (int64_t{1} << 31) - 1 - s.delta_max - half;
    if (d.acc[b].abs().max().item<int64_t>() >= room) continue;
    d.acc32[b] = d.acc[b].to(torch::kInt32).contiguous();
    // Golden codes position-major for the vectorized rounding (pooled positions with pooling).
    if (s.by_shift) d.gold32[b] = d.codes[b].permute({0, 2, 3, 1}).contiguous();
  }
  d.scores = g.scores().slice(0, begin, end).to(torch::kInt64).contiguous();
  d.labels = g.correct_labels().slice(0, begin, end).contiguous();
  return d;
}

void ConeEngine::Impl::reserve(Scratch& w) const {
  size_t delta = 0, pos = 0, cells = 0, dense = 0;
  for (const Stage& s : stages) {
    delta = std::max<size_t>(delta, s.pre.numel());
    pos = std::max<size_t>(pos, s.pre.h * s.pre.w * s.groups);
    cells = std::max<size_t>(cells, s.out.numel());
    dense = std::max<size_t>(dense, s.in.numel());
  }
  w.delta.assign(delta, 0);
  w.hit.assign(pos, 0);
  w.cell.assign(cells, 0);
  w.wide.assign(cells, 0);
  w.dense.assign(dense, 0);
  w.live.assign(stages.size(), {});
  w.dscore.assign(static_cast<size_t>(classes), 0);
  w.csum.assign(static_cast<size_t>(stages.back().in.c), 0);
  w.csum32.assign(static_cast<size_t>(stages.back().in.c), 0);
  size_t widest = 1;
  for (const Stage& s : stages) widest = std::max<size_t>(widest, s.pre.c);
  w.best.assign(widest, 0);
  w.changed.assign(widest, 0);
  w.best32.assign(widest, 0);
  w.ks.assign(widest, 0);
  w.ds.assign(widest, 0);
  w.any32.assign(widest, 0);
  w.bound.assign(static_cast<size_t>(classes), 0.0);
  size_t channels = 2;
  for (const Stage& s : stages) channels = std::max<size_t>(channels, s.in.c + 1);
  w.channel.assign(channels, 0);
  w.paired.assign(channels / 2 + 1, 0);
}

void ConeEngine::Impl::run(const std::vector<std::vector<Fault>>& sets, int64_t begin, int64_t end,
                           int threads, std::vector<int64_t>& counts) {
  if (!accepts(sets))
    fail("cone engine: these fault sets need the incremental engine",
         unsupported.empty() ? "" : " (" + unsupported + ")");
  if (counts.size() != sets.size())
    fail("cone engine: ", counts.size(), " counts for ", sets.size(), " fault sets");
  if (begin < 0 || end > g.correct() || begin > end)
    fail("cone engine: images [", begin, ", ", end, ") outside the ", g.correct(), " correct ones");
  if (sets.empty() || begin == end) return;
  std::vector<Decoded> faults;
  int first = static_cast<int>(stages.size());
  for (const auto& s : sets) {
    const Fault& f = s[0];
    check_fault(q, target, f);
    const Shape& sh = stages[f.block].out;
    faults.push_back({f.block, static_cast<int32_t>(f.index / (sh.h * sh.w)),
                      static_cast<int32_t>((f.index / sh.w) % sh.h),
                      static_cast<int32_t>(f.index % sh.w), flip_table(f.block, f.bit)});
    first = std::min(first, f.block);
  }
  const ChunkData d = prepare(begin, end, first);
  const int t = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, end - begin)));
  std::vector<std::vector<int64_t>> part(t, std::vector<int64_t>(sets.size(), 0));
  std::vector<ConeStats> stats(t);
  parallel_for(t, [&](int id) {
    Scratch w;
    reserve(w);
    for (int64_t i = id; i < d.n; i += t)
      for (size_t k = 0; k < faults.size(); ++k) part[id][k] += fails(faults[k], d, i, w);
    stats[id] = w.stats;
  });
  for (int id = 0; id < t; ++id)
    for (size_t k = 0; k < sets.size(); ++k) counts[k] += part[id][k];
  std::lock_guard<std::mutex> lock(m);
  for (const ConeStats& s : stats) {
    totals.pairs += s.pairs;
    totals.vanished += s.vanished;
    totals.pruned += s.pruned;
    totals.scored += s.scored;
  }
}

ConeEngine::ConeEngine(const QuantizedNetwork& q, const GoldenRun& golden, FaultTarget target,
                       const EngineOptions& o)
    : impl_(std::make_unique<Impl>(q, golden, target, o)) {}

ConeEngine::~ConeEngine() = default;

int64_t ConeEngine::failures(const std::vector<Fault>& faults) {
  return impl_->incremental.failures(faults);
}

bool ConeEngine::image_major(const std::vector<std::vector<Fault>>& sets) const {
  return impl_->accepts(sets);
}

void ConeEngine::failures_over(const std::vector<std::vector<Fault>>& sets, int64_t begin,
                               int64_t end, int threads, std::vector<int64_t>& counts) {
  torch::NoGradGuard no_grad;
  impl_->run(sets, begin, end, threads, counts);
}

bool ConeEngine::supported(std::string* why) const {
  if (why) *why = impl_->unsupported;
  return impl_->unsupported.empty();
}

ConeStats ConeEngine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->totals;
}

}  // namespace flipguard
