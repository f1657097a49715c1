// The cone engine's kernels (src/fault/cone/kernels.hpp), XNNPACK style: every kernel at every
// size from 1 to 130 and past two 64-lane blocks (so every remainder of the 8-, 16- and 64-lane
// loops), on random inputs from a seeded generator, outputs poisoned before the call; the plain
// variant against a value computed here in int64, the AVX2 variant against the plain one element
// by element. A failure names the seed and the size.
#include "fault/cone/kernels.hpp"
#include "quant/rounding.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

using namespace flipguard;

namespace {

constexpr uint32_t kSeed = 20261207;
constexpr int32_t kPoison = 0x7f7f7f7f;

std::vector<int64_t> sizes() {
  std::vector<int64_t> s;
  for (int64_t k = 1; k <= 130; ++k) s.push_back(k);
  for (int64_t k : {191, 192, 193, 255, 256, 257}) s.push_back(k);
  return s;
}

using Vec = std::vector<int32_t>;

int32_t uniform(std::mt19937& rng, int32_t lo, int32_t hi) {
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

Vec random_vec(std::mt19937& rng, int64_t n, int32_t lo, int32_t hi) {
  Vec v(static_cast<size_t>(n));
  for (auto& x : v) x = uniform(rng, lo, hi);
  return v;
}

/// v with about a `zero_share` of its elements set to 0.
Vec sparse(std::mt19937& rng, Vec v, double zero_share) {
  std::bernoulli_distribution zero(zero_share);
  for (auto& x : v)
    if (zero(rng)) x = 0;
  return v;
}

/// Element by element, naming the first index that differs.
void expect_same(const Vec& got, const Vec& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i]) {
      ADD_FAILURE() << what << "[" << i << "] is " << got[i] << ", expected " << want[i];
      return;
    }
}

/// The rounding the kernels do by a shift, from the library's one rounding rule, in int64.
int64_t rounded(int64_t v, int rs, int64_t lo, int64_t hi) {
  return std::clamp(round_half_up_div(v, int64_t{1} << rs), lo, hi);
}

bool have_avx2() { return cpu_has_avx2(); }

// --- gemv ----------------------------------------------------------------------------------------

struct GemvCase {
  int64_t K = 0, P = 0;
  int n = 0;
  std::vector<int16_t> w;  // [P][K][2]
  Vec packed, pairs, dst;

  GemvCase(std::mt19937& rng, int64_t K_) : K(K_), P(uniform(rng, 1, 5)), n(uniform(rng, 0, 4)) {
    w.resize(static_cast<size_t>(P * K * 2));
    for (auto& x : w) x = static_cast<int16_t>(uniform(rng, -128, 127));
    for (int t = 0; t < n; ++t) {
      // Changes of 8-bit codes: -255..255 per channel of the pair.
      const auto d0 = static_cast<uint16_t>(uniform(rng, -255, 255));
      const auto d1 = static_cast<uint16_t>(uniform(rng, -255, 255));
      packed.push_back(static_cast<int32_t>(d0 | (uint32_t{d1} << 16)));
      pairs.push_back(uniform(rng, 0, static_cast<int32_t>(P - 1)));
    }
    dst = random_vec(rng, K, -1000000, 1000000);
  }
  Vec run(decltype(&cone_gemv__scalar) f) const {
    Vec out = dst;
    f(out.data(), w.data(), packed.data(), pairs.data(), n, K);
    return out;
  }
  Vec expected() const {
    Vec out = dst;
    for (int64_t k = 0; k < K; ++k) {
      int64_t v = dst[k];
      for (int t = 0; t < n; ++t) {
        const int64_t d0 = static_cast<int16_t>(packed[t] & 0xffff);
        const int64_t d1 = static_cast<int16_t>(static_cast<uint32_t>(packed[t]) >> 16);
        const int64_t at = (int64_t{pairs[t]} * K + k) * 2;
        v += d0 * w[at] + d1 * w[at + 1];
      }
      out[k] = static_cast<int32_t>(v);
    }
    return out;
  }
};

// --- fused_sum -----------------------------------------------------------------------------------

/// Parameters of a rounding by a shift into a format: rs, lo, hi, ReLU.
struct ShiftFormat {
  int rs;
  int32_t lo, hi;
  bool relu;
  explicit ShiftFormat(std::mt19937& rng)
      : rs(uniform(rng, 1, 12)), lo(-128), hi(127), relu(uniform(rng, 0, 1) == 1) {
    if (uniform(rng, 0, 2) == 0) lo = 0;  // an unsigned or restricted range
  }
};

struct FusedSumCase {
  int64_t K, P;
  ShiftFormat f;
  Vec hits, delta, a, gold, csum;

  FusedSumCase(std::mt19937& rng, int64_t K_) : K(K_), P(uniform(rng, 1, 6)), f(rng) {
    for (int32_t p = 0; p < P; ++p)
      if (uniform(rng, 0, 1)) hits.push_back(p);
    a = random_vec(rng, P * K, -(1 << 20), 1 << 20);
    delta = sparse(rng, random_vec(rng, P * K, -(1 << 16), 1 << 16), 0.3);
    gold = random_vec(rng, P * K, f.lo, f.hi);
    csum = random_vec(rng, K, -100000, 100000);
  }
  std::pair<Vec, Vec> run(decltype(&cone_fused_sum__scalar) fn) const {
    Vec d = delta, c = csum;
    fn(hits.data(), hits.size(), d.data(), a.data(), gold.data(), K, f.relu, f.rs, f.lo, f.hi,
       c.data());
    return {d, c};
  }
  std::pair<Vec, Vec> expected() const {
    Vec d = delta, c = csum;
    for (int32_t p : hits)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = p * K + k;
        int64_t v = int64_t{a[at]} + delta[at];
        if (f.relu) v = std::max<int64_t>(v, 0);
        c[k] = static_cast<int32_t>(c[k] + rounded(v, f.rs, f.lo, f.hi) - gold[at]);
        d[at] = 0;
      }
    return {d, c};
  }
};

// --- position_shift and cell_shift ---------------------------------------------------------------

/// Changed channels and their changes, poisoned past what a kernel appended.
struct Changes {
  Vec ks, ds, dv;
  int n = 0;
};

void expect_same(const Changes& got, const Changes& want) {
  EXPECT_EQ(got.n, want.n) << "changed channels";
  expect_same(got.ks, want.ks, "ks");
  expect_same(got.ds, want.ds, "ds");
  expect_same(got.dv, want.dv, "dv");
}

/// Golden codes near the rounding of `v` (equal about a third of the time), so that some channels
/// change and others do not.
Vec near_codes(std::mt19937& rng, const std::vector<int64_t>& v, const ShiftFormat& f) {
  Vec gold(v.size());
  for (size_t k = 0; k < v.size(); ++k)
    gold[k] = static_cast<int32_t>(
        std::clamp<int64_t>(rounded(v[k], f.rs, f.lo, f.hi) + uniform(rng, -1, 1), f.lo, f.hi));
  return gold;
}

/// What the shift kernels give: for every channel k with moved[k] != 0, the rounding of v[k]
/// minus gold[k] where it is not 0; `dv` is what their first argument holds afterwards.
Changes changes_where(const Vec& moved, const std::vector<int64_t>& v, const Vec& gold,
                      const ShiftFormat& f, Vec dv) {
  const auto K = static_cast<int64_t>(v.size());
  Changes c{Vec(K, kPoison), Vec(K, kPoison), std::move(dv)};
  for (int64_t k = 0; k < K; ++k) {
    const int64_t d = moved[k] == 0 ? 0 : rounded(v[k], f.rs, f.lo, f.hi) - gold[k];
    if (d == 0) continue;
    c.ks[c.n] = static_cast<int32_t>(k);
    c.ds[c.n++] = static_cast<int32_t>(d);
  }
  return c;
}

struct PositionShiftCase {
  int64_t K;
  ShiftFormat f;
  Vec dv, a, gold;
  std::vector<int64_t> v;  // act(a + dv)

  PositionShiftCase(std::mt19937& rng, int64_t K_) : K(K_), f(rng) {
    a = random_vec(rng, K, -(1 << 20), 1 << 20);
    // Some blocks of eight untouched entirely, some channels within a block.
    dv = sparse(rng, random_vec(rng, K, -(1 << 16), 1 << 16), uniform(rng, 0, 1) ? 0.5 : 0.95);
    v.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k)
      v[k] = f.relu ? std::max<int64_t>(int64_t{a[k]} + dv[k], 0) : int64_t{a[k]} + dv[k];
    gold = near_codes(rng, v, f);
  }
  Changes run(decltype(&cone_position_shift__scalar) fn) const {
    Changes c{Vec(K, kPoison), Vec(K, kPoison), dv};
    c.n = fn(c.dv.data(), a.data(), gold.data(), K, f.relu, f.rs, f.lo, f.hi, c.ks.data(),
             c.ds.data());
    return c;
  }
  Changes expected() const { return changes_where(dv, v, gold, f, Vec(K, 0)); }
};

struct CellShiftCase {
  int64_t K;
  ShiftFormat f;
  Vec best, any, gold;

  CellShiftCase(std::mt19937& rng, int64_t K_) : K(K_), f(rng) {
    best = random_vec(rng, K, -(1 << 20), 1 << 20);
    any = sparse(rng, random_vec(rng, K, -(1 << 16), 1 << 16), uniform(rng, 0, 1) ? 0.5 : 0.95);
    gold = near_codes(rng, std::vector<int64_t>(best.begin(), best.end()), f);
  }
  Changes run(decltype(&cone_cell_shift__scalar) fn) const {
    Changes c{Vec(K, kPoison), Vec(K, kPoison), {}};
    c.n = fn(best.data(), any.data(), gold.data(), K, f.rs, f.lo, f.hi, c.ks.data(), c.ds.data());
    return c;
  }
  Changes expected() const {
    return changes_where(any, std::vector<int64_t>(best.begin(), best.end()), gold, f, {});
  }
};

// --- max_into ------------------------------------------------------------------------------------

struct MaxIntoCase {
  int64_t K;
  bool changed;   // dv given
  int32_t floor;  // 0 after ReLU
  Vec best, any, a, dv;

  MaxIntoCase(std::mt19937& rng, int64_t K_)
      : K(K_),
        changed(uniform(rng, 0, 3) != 0),
        floor(uniform(rng, 0, 1) ? 0 : std::numeric_limits<int32_t>::min()) {
    best = random_vec(rng, K, -(1 << 20), 1 << 20);
    if (uniform(rng, 0, 1))
      std::fill(best.begin(), best.end(), std::numeric_limits<int32_t>::min());
    any = sparse(rng, random_vec(rng, K, -(1 << 16), 1 << 16), 0.7);
    a = random_vec(rng, K, -(1 << 20), 1 << 20);
    dv = sparse(rng, random_vec(rng, K, -(1 << 16), 1 << 16), 0.5);
  }
  std::pair<Vec, Vec> run(decltype(&cone_max_into__scalar) fn) const {
    Vec b = best, y = any;
    fn(b.data(), y.data(), a.data(), changed ? dv.data() : nullptr, K, floor);
    return {b, y};
  }
  std::pair<Vec, Vec> expected() const {
    Vec b = best, y = any;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t v = int64_t{a[k]} + (changed ? dv[k] : 0);
      b[k] = static_cast<int32_t>(std::max<int64_t>({best[k], v, floor}));
      if (changed) y[k] |= dv[k];
    }
    return {b, y};
  }
};

// --- the sweeps ----------------------------------------------------------------------------------

void expect_same(const std::pair<Vec, Vec>& got, const std::pair<Vec, Vec>& want) {
  expect_same(got.first, want.first, "first output");
  expect_same(got.second, want.second, "second output");
}

void expect_same(const Vec& got, const Vec& want) { expect_same(got, want, "output"); }

/// For every size: the plain kernel against the expected value, and with `avx2`, the AVX2 kernel
/// against the plain one, on the same inputs.
template <class Case, class Fn>
void sweep(Fn scalar, Fn avx2) {
  for (const int64_t K : sizes()) {
    const uint32_t seed = kSeed + static_cast<uint32_t>(K);
    SCOPED_TRACE(testing::Message() << "seed " << seed << ", size " << K);
    std::mt19937 rng(seed);
    for (int rep = 0; rep < 4; ++rep) {
      const Case c(rng, K);
      const auto plain = c.run(scalar);
      expect_same(plain, c.expected());
      if (avx2) expect_same(c.run(avx2), plain);
      if (testing::Test::HasFailure()) return;
    }
  }
}

#define FLIPGUARD_KERNEL_TESTS(Name, kernel, Case)                 \
  TEST(ConeKernels, Name##Scalar) {                                \
    sweep<Case>(&kernel##__scalar, decltype(&kernel##__scalar){}); \
  }                                                                \
  TEST(ConeKernels, Name##Avx2) {                                  \
    if (!have_avx2()) GTEST_SKIP() << "the processor has no AVX2"; \
    sweep<Case>(&kernel##__scalar, &kernel##__avx2);               \
  }

FLIPGUARD_KERNEL_TESTS(Gemv, cone_gemv, GemvCase)
FLIPGUARD_KERNEL_TESTS(FusedSum, cone_fused_sum, FusedSumCase)
FLIPGUARD_KERNEL_TESTS(PositionShift, cone_position_shift, PositionShiftCase)
FLIPGUARD_KERNEL_TESTS(CellShift, cone_cell_shift, CellShiftCase)
FLIPGUARD_KERNEL_TESTS(MaxInto, cone_max_into, MaxIntoCase)

TEST(ConeKernels, DispatchFollowsTheOptionAndTheProcessor) {
  EXPECT_EQ(cone_kernels(false).gemv, &cone_gemv__scalar);
  EXPECT_EQ(cone_kernels(true).gemv, have_avx2() ? &cone_gemv__avx2 : &cone_gemv__scalar);
  EXPECT_EQ(cone_kernels(true).max_into,
            have_avx2() ? &cone_max_into__avx2 : &cone_max_into__scalar);
}

}  // namespace
