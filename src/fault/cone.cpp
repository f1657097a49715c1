// The cone engine: a flipped code's change pushed through the network in integer arithmetic, as
// a sparse list of changed codes, image by image for all faults of a campaign.
#include <flipguard/error.hpp>
#include <flipguard/fault.hpp>

#include "int_div.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include <immintrin.h>

namespace flipguard {

namespace {


/// Rounding and saturation of an exact numerator into a site's format, as QuantizedNetwork's
/// forward pass does it: round half up of num * 2^shift / divisor, then clamp.
struct Requant {
  int shift = 0;
  int64_t divisor = 1;
  int64_t lo = 0, hi = 0;

  Requant() = default;
  Requant(int shift_, int64_t divisor_, const FixedPoint& f)
      : shift(shift_), divisor(divisor_), lo(f.lo()), hi(f.hi()) {
    if (shift > 24 || shift < -40)
      fail("cone engine: rescaling by 2^", shift, " is outside the supported -40..24");
  }
  int64_t operator()(int64_t num) const {
    int64_t v;
    if (divisor == 1 && shift < 0) {
      // floor((2 num + 2^-shift) / 2^(1 - shift)): add half an LSB, shift (arithmetic, floor).
      v = (num + (int64_t{1} << (-shift - 1))) >> -shift;
    } else if (shift >= 0) {
      const int64_t x = num * (int64_t{1} << shift);
      v = divisor == 1 ? x : floor_div(2 * x + divisor, 2 * divisor);
    } else {
      const int64_t d = divisor << -shift;
      v = floor_div(2 * num + d, 2 * d);
    }
    return std::clamp(v, lo, hi);
  }
  /// The factor 2^shift / divisor that rounding approximates.
  double scale() const { return std::ldexp(1.0, shift) / static_cast<double>(divisor); }
};

/// One changed code of a site: channel, row, column, new code minus golden code.
struct Entry {
  int32_t c, y, x, d;
};

/// dst[k] += sum over listed channel pairs t of d0_t w[pair][k][0] + d1_t w[pair][k][1], where
/// w is [pairs][K][2] int16 and packed[t] holds d0_t (low 16 bits) and d1_t (high 16 bits): a
/// matrix-vector product over the changed channels of one input position. Plain version.
/// Outputs [k0, K) only.
void gemv_plain(int32_t* dst, const int16_t* w, const int32_t* packed, const int32_t* pairs,
                int n, int64_t K, int64_t k0 = 0) {
  for (int t = 0; t < n; ++t) {
    const int32_t d0 = static_cast<int16_t>(packed[t] & 0xffff);
    const int32_t d1 = static_cast<int16_t>(static_cast<uint32_t>(packed[t]) >> 16);
    const int16_t* wp = w + int64_t{pairs[t]} * K * 2;
    for (int64_t k = k0; k < K; ++k) dst[k] += d0 * wp[2 * k] + d1 * wp[2 * k + 1];
  }
}

/// The same with AVX2: eight outputs at a time, vpmaddwd multiplies and adds both channels of a
/// pair at once (int16 x int16 products summed in int32: exact for 8-bit codes and weights).
__attribute__((target("avx2"))) void gemv_avx2(int32_t* dst, const int16_t* w,
                                               const int32_t* packed, const int32_t* pairs, int n,
                                               int64_t K) {
  int64_t k0 = 0;
  // 64 outputs at a time in eight registers: one broadcast of the pair's changes serves all eight.
  for (; k0 + 64 <= K; k0 += 64) {
    __m256i acc[8];
    for (int r = 0; r < 8; ++r)
      acc[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst + k0 + 8 * r));
    for (int t = 0; t < n; ++t) {
      const __m256i d = _mm256_set1_epi32(packed[t]);
      const int16_t* wp = w + (int64_t{pairs[t]} * K + k0) * 2;
      for (int r = 0; r < 8; ++r)
        acc[r] = _mm256_add_epi32(
            acc[r], _mm256_madd_epi16(
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 16 * r)), d));
    }
    for (int r = 0; r < 8; ++r)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k0 + 8 * r), acc[r]);
  }
  for (; k0 + 8 <= K; k0 += 8) {
    __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst + k0));
    for (int t = 0; t < n; ++t) {
      const __m256i ww = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + (int64_t{pairs[t]} * K + k0) * 2));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(ww, _mm256_set1_epi32(packed[t])));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k0), acc);
  }
  if (k0 < K) gemv_plain(dst, w, packed, pairs, n, K, k0);
}

/// Rounding by a plain shift and saturation, eight int32 lanes at a time (AVX2):
/// clamp((v + half) >> rs, lo, hi), the arithmetic shift rounding half up like Requant.
struct ShiftRound8 {
  __m256i half, lo, hi;
  __m128i count;
  __attribute__((target("avx2"))) ShiftRound8(int rs, int32_t lo_, int32_t hi_)
      : half(_mm256_set1_epi32(int32_t{1} << (rs - 1))),
        lo(_mm256_set1_epi32(lo_)),
        hi(_mm256_set1_epi32(hi_)),
        count(_mm_cvtsi32_si128(rs)) {}
  __attribute__((target("avx2"))) __m256i operator()(__m256i v) const {
    return _mm256_min_epi32(_mm256_max_epi32(_mm256_sra_epi32(_mm256_add_epi32(v, half), count), lo),
                            hi);
  }
};

__attribute__((target("avx2"))) inline __m256i load8(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

/// Appends channel k0 + lane and its change d[lane] to ks/ds for every lane set in `mask` (the
/// low eight bits), lanes ascending; returns the new count.
__attribute__((target("avx2"))) inline int append_lanes(unsigned mask, __m256i d, int64_t k0,
                                                         int32_t* ks, int32_t* ds, int n) {
  alignas(32) int32_t diff[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(diff), d);
  for (; mask; mask &= mask - 1) {
    const int lane = __builtin_ctz(mask);
    ks[n] = static_cast<int32_t>(k0 + lane);
    ds[n++] = diff[lane];
  }
  return n;
}

/// The change of the per-channel sums of a site read by a summed last block, straight from the
/// accumulated change (int32 throughout): for every reached position p and channel k,
/// csum[k] += clamp((relu(a + delta) + half) >> rs) - golden code, and delta is cleared.
/// Plain version of the fused step; a, delta and gold are [positions][K].
void fused_sum_plain(const int32_t* hits, size_t nh, int32_t* delta, const int32_t* a,
                     const int32_t* gold, int64_t K, bool relu, int rs, int32_t lo, int32_t hi,
                     int32_t* csum) {
  const int32_t half = int32_t{1} << (rs - 1);
  for (size_t h = 0; h < nh; ++h) {
    const int64_t base = int64_t{hits[h]} * K;
    for (int64_t k = 0; k < K; ++k) {
      int32_t v = a[base + k] + delta[base + k];
      delta[base + k] = 0;
      if (relu) v = std::max(v, 0);
      const int32_t code = std::clamp((v + half) >> rs, lo, hi);
      csum[k] += code - gold[base + k];
    }
  }
}

/// The same with AVX2, eight channels at a time (K a multiple of 8).
__attribute__((target("avx2"))) void fused_sum_avx2(const int32_t* hits, size_t nh,
                                                    int32_t* delta, const int32_t* a,
                                                    const int32_t* gold, int64_t K, bool relu,
                                                    int rs, int32_t lo, int32_t hi, int32_t* csum) {
  const ShiftRound8 round(rs, lo, hi);
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    __m256i cs = load8(csum + k0);
    for (size_t h = 0; h < nh; ++h) {
      const int64_t at = int64_t{hits[h]} * K + k0;
      __m256i v = _mm256_add_epi32(load8(a + at), load8(delta + at));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(delta + at), zero);
      if (relu) v = _mm256_max_epi32(v, zero);
      cs = _mm256_add_epi32(cs, _mm256_sub_epi32(round(v), load8(gold + at)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(csum + k0), cs);
  }
}

/// The changed codes of one position of a site written by a convolution without pooling behind
/// it and rounded by a plain shift, straight from the accumulated change dv (int32 throughout):
/// for every channel k, code = clamp((act(a + dv) + half) >> rs) where it differs from the
/// golden code gold[k]; channels in ks[0, n), changes in ds[0, n), ascending; returns n; dv is
/// cleared. Channels whose change is 0 keep their golden code (gold = rounding of act(a)). AVX2,
/// eight channels at a time (K a multiple of 8).
__attribute__((target("avx2"))) int position_shift_avx2(int32_t* dv, const int32_t* a,
                                                        const int32_t* gold, int64_t K, bool relu,
                                                        int rs, int32_t lo, int32_t hi,
                                                        int32_t* ks, int32_t* ds) {
  const ShiftRound8 round(rs, lo, hi);
  const __m256i zero = _mm256_setzero_si256();
  int n = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    const __m256i moved = load8(dv + k0);
    if (_mm256_testz_si256(moved, moved)) continue;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dv + k0), zero);
    __m256i v = _mm256_add_epi32(load8(a + k0), moved);
    if (relu) v = _mm256_max_epi32(v, zero);
    const __m256i d = _mm256_sub_epi32(round(v), load8(gold + k0));
    const unsigned mask = ~static_cast<unsigned>(_mm256_movemask_ps(
                              _mm256_castsi256_ps(_mm256_cmpeq_epi32(d, zero)))) & 0xffu;
    if (mask) n = append_lanes(mask, d, k0, ks, ds, n);
  }
  return n;
}

/// The changed codes of one max pooling cell of a site rounded by a plain shift: for every channel
/// k whose window changed (any[k] != 0), code = clamp((best[k] + half) >> rs) where it differs from
/// the golden code gold[k]; channels in ks[0, n), changes in ds[0, n), ascending; returns n. AVX2,
/// eight channels at a time (K a multiple of 8).
__attribute__((target("avx2"))) int cell_shift_avx2(const int32_t* best, const int32_t* any,
                                                    const int32_t* gold, int64_t K, int rs,
                                                    int32_t lo, int32_t hi, int32_t* ks,
                                                    int32_t* ds) {
  const ShiftRound8 round(rs, lo, hi);
  const __m256i zero = _mm256_setzero_si256();
  int n = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    const __m256i moved = load8(any + k0);
    if (_mm256_testz_si256(moved, moved)) continue;
    const __m256i d = _mm256_sub_epi32(round(load8(best + k0)), load8(gold + k0));
    // Lanes whose change is nonzero and whose window moved.
    const __m256i keep = _mm256_andnot_si256(
        _mm256_or_si256(_mm256_cmpeq_epi32(d, zero), _mm256_cmpeq_epi32(moved, zero)),
        _mm256_set1_epi32(-1));
    const unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(keep)));
    if (mask) n = append_lanes(mask, d, k0, ks, ds, n);
  }
  return n;
}

/// best[k] = max(best[k], max(a[k] + dv[k], floor)), any[k] |= dv[k] (dv null: no change): one
/// position of a max pooling window, every channel, after ReLU (floor 0) or not (floor INT32_MIN).
/// Compiled for AVX2 and for any x86-64, chosen when the program starts.
__attribute__((target_clones("avx2", "default"))) void max_into(int32_t* best, int32_t* any,
                                                              const int32_t* a, const int32_t* dv,
                                                              int64_t K, int32_t floor) {
  if (dv) {
    for (int64_t k = 0; k < K; ++k) {
      best[k] = std::max(best[k], std::max(a[k] + dv[k], floor));
      any[k] |= dv[k];
    }
  } else {
    for (int64_t k = 0; k < K; ++k) best[k] = std::max(best[k], std::max(a[k], floor));
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

enum class Kind { Conv, Linear, MaxPool, GapPool };

/// Changes of more codes than this skip the pruning bound (it would not prove them harmless).
constexpr size_t kBoundEntries = 16;

/// One block of the chain, with what the kernel needs of it.
struct Stage {
  Kind kind = Kind::Conv;
  bool last = false, relu = false;
  bool post_max = false, post_gap = false;  // pooling behind a weighted block
  int pk = 1, ps = 1;                        // max pooling window and stride
  Shape in, pre, out;                        // input; output before post pooling; output
  int kernel = 1, stride = 1, pad = 0, dil = 1;
  std::vector<int32_t> wt;  // Conv: [C][k][k][K]; Linear: [C*H*W][K]
  // Convolution whose changes and weights fit int16 (8-bit formats): weights as
  // [k][k][C/2][K][2], two input channels side by side for the paired multiply-add.
  bool packed = false;
  std::vector<int16_t> wt16;
  // The last block as a plain sum: 1x1 convolution (or fully-connected on a 1x1 map) without
  // ReLU whose scores sum every position: the change of score k is sum of d * w[c][k].
  bool summed = false;
  // Rounded into its site by a plain shift (divisor 1, shift -30..-1), with or without pooling.
  bool by_shift = false;
  // A shifted site read by a summed last block: the fused step (fused_sum_*) replaces emit when
  // the chunk's accumulators fit int32.
  bool fused = false;
  int64_t delta_max = 0;  // bound on |change of an accumulator|
  Requant rq;               // into the block's site (not for the last block)
  // Pruning, for a convolution that feeds the last block: per input channel c and class pair
  // (l, k), the bound's weight on |change of a code in channel c|; per pair, the bound's weight
  // on every output position the change may reach.
  bool bound = false;
  int overlap = 1;          // pooling windows a position can belong to
  std::vector<double> lin;  // [C][classes][classes]
  std::vector<double> slack;  // [classes][classes]

  /// A convolution without pooling behind it whose site is rounded by a plain shift: with int32
  /// accumulators, emit rounds its changed codes eight channels at a time.
  bool shifted() const { return kind == Kind::Conv && !post_max && by_shift; }

  /// The pooled rows [first, last] whose max pooling windows hold input row `y` (of `out` rows);
  /// the same for columns.
  std::pair<int64_t, int64_t> windows_of(int64_t y, int64_t out) const {
    return {std::max<int64_t>(0, ceil_div(y - pk + 1, ps)), std::min<int64_t>(out - 1, y / ps)};
  }
};

/// Golden data of a chunk of images, computed once and shared by every fault.
struct ChunkData {
  int64_t n = 0;
  std::vector<torch::Tensor> codes;  // per site: int32 n x C x H x W
  std::vector<torch::Tensor> acc;    // per weighted block: int64 n x H x W x K (before pooling)
  std::vector<torch::Tensor> sums;   // per global-average pooling block: int64 n x C
  // Fused stages whose accumulators fit int32: accumulators and golden codes, n x H x W x K.
  std::vector<torch::Tensor> acc32, gold32;
  torch::Tensor scores;              // int64 n x classes
  torch::Tensor labels;              // int64 n
};

/// One fault, decoded.
struct Decoded {
  int site;
  int32_t c, y, x;
  const std::vector<int32_t>* flip;  // new code by golden code - min code
};

/// A thread's scratch space.
struct Scratch {
  std::vector<int32_t> delta;    // change of accumulators, positions x K
  std::vector<uint8_t> hit;      // positions reached
  std::vector<int32_t> hits;     // their list
  std::vector<uint8_t> cell;     // pooled positions (or channel x position) reached
  std::vector<int32_t> cells;
  std::vector<int32_t> dense;    // change of an input map (max pooling blocks)
  std::vector<Entry> cur, next;
  std::vector<int64_t> dscore;
  std::vector<int64_t> csum;     // change per channel, summed over positions (summed last block)
  std::vector<int32_t> csum32;   // the same from the fused step
  std::vector<int64_t> best;     // per channel: pooled maximum of one cell
  std::vector<uint8_t> changed;  // per channel: whether a position of the cell changed
  std::vector<int32_t> best32, any32;  // the same for int32 accumulators
  std::vector<int32_t> ks, ds;         // changed channels of a cell and their changes
  std::vector<double> bound;     // per class
  std::vector<int16_t> channel;  // change per input channel of one position (packed path)
  std::vector<uint8_t> paired;   // channel pairs present
  std::vector<int32_t> pairs, packed;
  ConeStats stats;
};

}  // namespace

struct ConeEngine::Impl {
  const QuantizedNetwork& q;
  const GoldenRun& g;
  FaultTarget target;
  EngineOptions o;
  IncrementalEngine incremental;
  std::vector<Stage> stages;
  std::string unsupported;  // why the kernel cannot run this network; empty: it can
  int64_t classes = 0;
  std::mutex m;
  ConeStats totals;
  std::map<std::pair<int, int>, std::vector<int32_t>> flips;  // (site, bit) -> table

  Impl(const QuantizedNetwork& q_, const GoldenRun& g_, FaultTarget t, const EngineOptions& o_)
      : q(q_), g(g_), target(t), o(o_), incremental(q_, g_, t, o_) {
    try {
      build();
    } catch (const Error& e) {
      unsupported = e.what();
      stages.clear();
    }
  }

  void build() {
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
          if (blk.post.kind != PoolKind::None) fail("block '", blk.name, "': pooling behind a fully-connected block");
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

  static std::vector<int32_t> to_vector(const torch::Tensor& t) {
    const auto c = t.contiguous();
    return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
  }

  /// The pruning bound of the convolution `s` whose site feeds the last block `last`: a 1x1
  /// convolution (stride 1, no padding) or fully-connected block on a 1x1 map, without ReLU, whose
  /// scores are the sum over positions (global average pooling) or the single position.
  void build_bound(Stage& s, int last) {
    const Stage& l = stages[last];
    if (s.kind != Kind::Conv || l.relu) return;
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

  bool accepts(const std::vector<std::vector<Fault>>& sets) const {
    if (!unsupported.empty() || target != FaultTarget::Activations) return false;
    return std::all_of(sets.begin(), sets.end(), [](const auto& s) { return s.size() == 1; });
  }

  const std::vector<int32_t>* flip_table(int site, int bit) {
    std::lock_guard<std::mutex> lock(m);
    auto& t = flips[{site, bit}];
    if (t.empty()) {
      const FixedPoint& f = q.formats().act[site];
      for (int64_t c = f.min_code(); c <= f.max_code(); ++c)
        t.push_back(static_cast<int32_t>(flip_bit(c, bit, f)));
    }
    return &t;
  }

  ChunkData prepare(int64_t begin, int64_t end, int first_site) const {
    torch::NoGradGuard no_grad;
    ChunkData d;
    d.n = end - begin;
    const int nb = static_cast<int>(stages.size());
    d.codes.resize(nb);
    d.acc.resize(nb);
    d.sums.resize(nb);
    for (int b = first_site; b + 1 < nb; ++b)
      d.codes[b] = g.stored(b).slice(0, begin, end).to(torch::kInt32).contiguous();
    for (int b = first_site + 1; b < nb; ++b) {
      const Stage& s = stages[b];
      if (s.kind == Kind::Conv || s.kind == Kind::Linear)
        d.acc[b] = q.accumulator(b, d.codes[b - 1].to(torch::kFloat32))
                       .permute({0, 2, 3, 1})
                       .to(torch::kInt64)
                       .contiguous();
      if (s.kind == Kind::GapPool)
        d.sums[b] = d.codes[b - 1].to(torch::kInt64).sum({2, 3}).contiguous();
    }
    d.acc32.resize(nb);
    d.gold32.resize(nb);
    for (int b = first_site + 1; b + 1 < nb; ++b) {
      const Stage& s = stages[b];
      if (!(s.shifted() || (s.kind == Kind::Conv && s.post_max)) || d.n == 0) continue;
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

  void reserve(Scratch& w) const {
    size_t delta = 0, pos = 0, cells = 0, dense = 0;
    for (const Stage& s : stages) {
      delta = std::max<size_t>(delta, s.pre.numel());
      pos = std::max<size_t>(pos, s.pre.h * s.pre.w);
      cells = std::max<size_t>(cells, s.out.numel());
      dense = std::max<size_t>(dense, s.in.numel());
    }
    w.delta.assign(delta, 0);
    w.hit.assign(pos, 0);
    w.cell.assign(cells, 0);
    w.dense.assign(dense, 0);
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

  /// Whether the bound proves that the change `cur` of stage s's input cannot make image n fail.
  bool harmless(const Stage& s, const std::vector<Entry>& cur, const int64_t* score, int64_t label,
                Scratch& w) const {
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

  /// Convolution or fully-connected stage: adds the change of the input into the accumulators it
  /// reaches (w.delta, positions listed in w.hits).
  void accumulate(const Stage& s, const std::vector<Entry>& cur, Scratch& w) const {
    const int64_t K = s.pre.c, W = s.pre.w;
    auto add = [&](int32_t p, const int32_t* wrow, int32_t d) {
      if (!w.hit[p]) {
        w.hit[p] = 1;
        w.hits.push_back(p);
      }
      int32_t* dst = &w.delta[static_cast<size_t>(p) * K];
      for (int64_t k = 0; k < K; ++k) dst[k] += d * wrow[k];
    };
    if (s.kind == Kind::Linear) {
      for (const Entry& e : cur) {
        const int64_t flat = (int64_t{e.c} * s.in.h + e.y) * s.in.w + e.x;
        add(0, &s.wt[flat * K], e.d);
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
      const bool avx2 = o.simd && cpu_has_avx2();
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
          if (avx2)
            gemv_avx2(dst, wt, w.packed.data(), w.pairs.data(), n, K);
          else
            gemv_plain(dst, wt, w.packed.data(), w.pairs.data(), n, K);
        });
        a = b;
      }
      return;
    }
    for (const Entry& e : cur)
      positions(e.y, e.x, [&](int32_t p, int tap) {
        add(p, &s.wt[(int64_t{e.c} * k * k + tap) * K], e.d);
      });
  }

  int64_t act(const Stage& s, int64_t a) const { return s.relu ? std::max<int64_t>(a, 0) : a; }

  /// Stage b's new site codes from the accumulated change: out(channel, row, column, change) for
  /// every code that changed. acc32 (int32 accumulators, or null) and gold32 (golden codes
  /// position-major, or null) select the vectorized steps.
  template <class Out>
  void emit(const Stage& s, const int64_t* acc, const int32_t* acc32, const int32_t* gold,
            const int32_t* gold32, Scratch& w, Out&& out) const {
    const int64_t K = s.pre.c, HW = s.out.h * s.out.w;
    // Position-major golden codes exist only for sites rounded by a shift with int32 accumulators.
    const bool vector = gold32 && cpu_has_avx2() && K % 8 == 0;
    if (!s.post_max && vector) {
      // int32 accumulators, rounded by a shift: eight channels at a time, position-major codes.
      for (int32_t p : w.hits) {
        const int64_t at = int64_t{p} * K;
        const int n = position_shift_avx2(&w.delta[at], acc32 + at, gold32 + at, K, s.relu,
                                          -s.rq.shift, static_cast<int32_t>(s.rq.lo),
                                          static_cast<int32_t>(s.rq.hi), w.ks.data(), w.ds.data());
        const int32_t y = p / static_cast<int32_t>(s.out.w), x = p % static_cast<int32_t>(s.out.w);
        for (int t = 0; t < n; ++t) out(w.ks[t], y, x, w.ds[t]);
        w.hit[p] = 0;
      }
      w.hits.clear();
      return;
    }
    if (!s.post_max) {
      for (int32_t p : w.hits) {
        int32_t* dv = &w.delta[static_cast<size_t>(p) * K];
        const int64_t* a = &acc[static_cast<int64_t>(p) * K];
        for (int64_t k = 0; k < K; ++k) {
          if (dv[k] == 0) continue;
          const int64_t before = act(s, a[k]), after = act(s, a[k] + dv[k]);
          dv[k] = 0;
          if (before == after) continue;
          const int64_t code = s.rq(after), old = gold[k * HW + p];
          if (code != old)
            out(static_cast<int32_t>(k), static_cast<int32_t>(p / s.out.w),
                static_cast<int32_t>(p % s.out.w), static_cast<int32_t>(code - old));
        }
        w.hit[p] = 0;
      }
      w.hits.clear();
      return;
    }
    // Max pooling behind: the pooled positions whose windows hold a reached position.
    const int64_t PW = s.pre.w;
    for (int32_t p : w.hits) {
      const auto [py0, py1] = s.windows_of(p / PW, s.out.h);
      const auto [px0, px1] = s.windows_of(p % PW, s.out.w);
      for (int64_t py = py0; py <= py1; ++py)
        for (int64_t px = px0; px <= px1; ++px) {
          const int32_t c = static_cast<int32_t>(py * s.out.w + px);
          if (!w.cell[c]) {
            w.cell[c] = 1;
            w.cells.push_back(c);
          }
        }
    }
    // The new codes of a cell from the pooled maxima of its channels (`best`), where a position
    // of the window changed (`moved`).
    auto flush = [&](int32_t c, const auto* best, const auto* moved) {
      const int32_t py = c / static_cast<int32_t>(s.out.w), px = c % static_cast<int32_t>(s.out.w);
      for (int64_t k = 0; k < K; ++k) {
        if (!moved[k]) continue;
        const int64_t code = s.rq(best[k]), old = gold[k * HW + c];
        if (code != old) out(static_cast<int32_t>(k), py, px, static_cast<int32_t>(code - old));
      }
      w.cell[c] = 0;
    };
    if (acc32) {
      // int32 accumulators: the pooled maximum of every channel of a cell, vectorized.
      int32_t* best = w.best32.data();
      int32_t* any = w.any32.data();
      const int32_t floor = s.relu ? 0 : std::numeric_limits<int32_t>::min();
      for (int32_t c : w.cells) {
        const int64_t py = c / s.out.w, px = c % s.out.w;
        std::fill_n(best, K, std::numeric_limits<int32_t>::min());
        std::fill_n(any, K, 0);
        for (int i = 0; i < s.pk; ++i)
          for (int j = 0; j < s.pk; ++j) {
            const int64_t p = (py * s.ps + i) * PW + px * s.ps + j;
            max_into(best, any, &acc32[p * K], w.hit[p] ? &w.delta[p * K] : nullptr, K, floor);
          }
        if (vector) {
          const int n = cell_shift_avx2(best, any, gold32 + int64_t{c} * K, K, -s.rq.shift,
                                        static_cast<int32_t>(s.rq.lo),
                                        static_cast<int32_t>(s.rq.hi), w.ks.data(), w.ds.data());
          for (int t = 0; t < n; ++t)
            out(w.ks[t], static_cast<int32_t>(py), static_cast<int32_t>(px), w.ds[t]);
          w.cell[c] = 0;
        } else {
          flush(c, best, any);
        }
      }
    } else {
      int64_t* best = w.best.data();
      uint8_t* changed = w.changed.data();
      for (int32_t c : w.cells) {
        const int64_t py = c / s.out.w, px = c % s.out.w;
        std::fill_n(best, K, std::numeric_limits<int64_t>::min());
        std::fill_n(changed, K, 0);
        // Branch-free over channels: the pooled maximum of every channel of the cell.
        for (int i = 0; i < s.pk; ++i)
          for (int j = 0; j < s.pk; ++j) {
            const int64_t p = (py * s.ps + i) * PW + px * s.ps + j;
            const int64_t* a = &acc[p * K];
            if (w.hit[p]) {
              const int32_t* dv = &w.delta[p * K];
              for (int64_t k = 0; k < K; ++k) {
                changed[k] |= dv[k] != 0;
                best[k] = std::max(best[k], act(s, a[k] + dv[k]));
              }
            } else {
              for (int64_t k = 0; k < K; ++k) best[k] = std::max(best[k], act(s, a[k]));
            }
          }
        flush(c, best, changed);
      }
    }
    w.cells.clear();
    for (int32_t p : w.hits) {
      std::fill_n(&w.delta[static_cast<size_t>(p) * K], K, 0);
      w.hit[p] = 0;
    }
    w.hits.clear();
  }

  /// The last block: adds the accumulated change to the golden scores; whether the image fails.
  bool score(const Stage& s, const int64_t* acc, const int64_t* golden, int64_t label,
             Scratch& w) const {
    const int64_t K = s.pre.c, HW = s.pre.h * s.pre.w;
    std::fill(w.dscore.begin(), w.dscore.end(), 0);
    for (int32_t p : w.hits) {
      int32_t* dv = &w.delta[static_cast<size_t>(p) * K];
      const int64_t* a = &acc[static_cast<int64_t>(p) * K];
      for (int64_t k = 0; k < K; ++k) {
        if (dv[k] == 0) continue;
        const int64_t change = act(s, a[k] + dv[k]) - act(s, a[k]);
        dv[k] = 0;
        w.dscore[s.post_gap ? k : k * HW + p] += change;
      }
      w.hit[p] = 0;
    }
    w.hits.clear();
    return argmax(golden, w.dscore) != label;
  }

  /// The last block as a plain sum (Stage::summed): whether the change of its input, summed
  /// per channel in w.csum (reset here), fails the image.
  bool summed_fails(const Stage& s, const int64_t* golden, int64_t label, Scratch& w) const {
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

  int64_t argmax(const int64_t* golden, const std::vector<int64_t>& dscore) const {
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

  /// Pooling stage on a change of codes.
  void pool(const Stage& s, const std::vector<Entry>& cur, const int32_t* in, const int32_t* gold,
            const int64_t* sums, Scratch& w) const {
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

  /// Whether fault f makes image i of the chunk fail.
  bool fails(const Decoded& f, const ChunkData& d, int64_t i, Scratch& w) const {
    const int nb = static_cast<int>(stages.size());
    const int64_t* golden = d.scores.data_ptr<int64_t>() + i * classes;
    const int64_t label = d.labels.data_ptr<int64_t>()[i];
    ++w.stats.pairs;
    {
      const Shape& sh = stages[f.site].out;
      const int32_t old = d.codes[f.site].data_ptr<int32_t>()[i * sh.numel() + (int64_t{f.c} * sh.h + f.y) * sh.w + f.x];
      const FixedPoint& fmt = q.formats().act[f.site];
      const int32_t now = (*f.flip)[old - fmt.min_code()];
      w.cur.assign(1, {f.c, f.y, f.x, now - old});
    }
    for (int b = f.site + 1; b < nb; ++b) {
      const Stage& s = stages[b];
      // The bound is worth its cost only for small changes; larger ones hardly ever pass it.
      if (o.prune && s.bound && w.cur.size() <= kBoundEntries &&
          harmless(s, w.cur, golden, label, w)) {
        ++w.stats.pruned;
        return false;
      }
      w.next.clear();
      const int64_t* acc =
          d.acc[b].defined() ? d.acc[b].data_ptr<int64_t>() + i * s.pre.numel() : nullptr;
      if (s.summed) {
        ++w.stats.scored;
        for (const Entry& e : w.cur) w.csum[e.c] += e.d;
        return summed_fails(s, golden, label, w);
      }
      if (s.kind == Kind::Conv || s.kind == Kind::Linear) {
        accumulate(s, w.cur, w);
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
          const bool avx2 = o.simd && cpu_has_avx2() && s.pre.c % 8 == 0;
          (avx2 ? fused_sum_avx2 : fused_sum_plain)(
              w.hits.data(), w.hits.size(), w.delta.data(), d.acc32[b].data_ptr<int32_t>() + at,
              d.gold32[b].data_ptr<int32_t>() + at, s.pre.c, s.relu, -s.rq.shift,
              static_cast<int32_t>(s.rq.lo), static_cast<int32_t>(s.rq.hi), w.csum32.data());
          for (int32_t p : w.hits) w.hit[p] = 0;
          w.hits.clear();
          for (int64_t c = 0; c < s.pre.c; ++c) {
            w.csum[c] += w.csum32[c];
            w.csum32[c] = 0;
          }
          ++w.stats.scored;
          return summed_fails(stages[b + 1], golden, label, w);
        }
        if (stages[b + 1].summed) {
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
      } else {
        pool(s, w.cur, d.codes[b - 1].data_ptr<int32_t>() + i * s.in.numel(),
             d.codes[b].data_ptr<int32_t>() + i * s.out.numel(),
             d.sums[b].defined() ? d.sums[b].data_ptr<int64_t>() + i * s.in.c : nullptr, w);
      }
      std::swap(w.cur, w.next);
      if (w.cur.empty()) {
        ++w.stats.vanished;
        return false;
      }
    }
    return false;  // not reached: the last block is weighted
  }

  void run(const std::vector<std::vector<Fault>>& sets, int64_t begin, int64_t end, int threads,
           std::vector<int64_t>& counts) {
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
    std::exception_ptr error;
    std::mutex em;
    auto work = [&](int id) {
      try {
        Scratch w;
        reserve(w);
        for (int64_t i = id; i < d.n; i += t)
          for (size_t k = 0; k < faults.size(); ++k) part[id][k] += fails(faults[k], d, i, w);
        stats[id] = w.stats;
      } catch (...) {
        std::lock_guard<std::mutex> lock(em);
        if (!error) error = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (int id = 1; id < t; ++id) pool.emplace_back(work, id);
    work(0);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
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
};

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
