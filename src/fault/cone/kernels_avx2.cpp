// The cone engine's kernels with AVX2, eight int32 lanes at a time, each with a plain tail for
// the last K % 8 channels so that it takes any size. Every function here carries
// target("avx2") instead of the whole file being built with -mavx2: inline functions of the
// standard library instantiated here then stay plain x86-64 code, and nothing from this file runs
// unless cone_kernels (kernels.cpp) found AVX2 on the processor.
#include "kernels.hpp"

#include <immintrin.h>

namespace flipguard {

namespace {

#define FLIPGUARD_AVX2 __attribute__((target("avx2")))

/// Rounding by a plain shift and saturation, eight int32 lanes at a time:
/// clamp((v + half) >> rs, lo, hi), the arithmetic shift rounding half up like Requant.
struct ShiftRound8 {
  __m256i half, lo, hi;
  __m128i count;
  FLIPGUARD_AVX2 ShiftRound8(int rs, int32_t lo_, int32_t hi_)
      : half(_mm256_set1_epi32(int32_t{1} << (rs - 1))),
        lo(_mm256_set1_epi32(lo_)),
        hi(_mm256_set1_epi32(hi_)),
        count(_mm_cvtsi32_si128(rs)) {}
  FLIPGUARD_AVX2 __m256i operator()(__m256i v) const {
    return _mm256_min_epi32(
        _mm256_max_epi32(_mm256_sra_epi32(_mm256_add_epi32(v, half), count), lo), hi);
  }
};

/// The same for one value (the tails).
inline int32_t shift_round(int32_t v, int rs, int32_t lo, int32_t hi) {
  const int32_t r = (v + (int32_t{1} << (rs - 1))) >> rs;
  return r < lo ? lo : r > hi ? hi : r;
}

FLIPGUARD_AVX2 inline __m256i load8(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

FLIPGUARD_AVX2 inline void store8(int32_t* p, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

/// The lanes of v that are not zero, as the low eight bits of a mask.
FLIPGUARD_AVX2 inline unsigned nonzero_lanes(__m256i v) {
  const __m256i zero = _mm256_cmpeq_epi32(v, _mm256_setzero_si256());
  return ~static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(zero))) & 0xffu;
}

/// Appends channel k0 + lane and its change d[lane] to ks/ds for every lane set in `mask` (the
/// low eight bits), lanes ascending; returns the new count.
FLIPGUARD_AVX2 inline int append_lanes(unsigned mask, __m256i d, int64_t k0, int32_t* ks,
                                       int32_t* ds, int n) {
  alignas(32) int32_t diff[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(diff), d);
  for (; mask; mask &= mask - 1) {
    const int lane = __builtin_ctz(mask);
    ks[n] = static_cast<int32_t>(k0 + lane);
    ds[n++] = diff[lane];
  }
  return n;
}

/// Appends the scalar twin's m results for channels from k0 on (it numbers them from 0).
inline int shift_channels(int64_t k0, int m, int32_t* ks, int n) {
  for (int t = n; t < n + m; ++t) ks[t] += static_cast<int32_t>(k0);
  return n + m;
}

}  // namespace

// vpmaddwd multiplies and adds both channels of a pair at once (int16 x int16 products summed in
// int32: exact for 8-bit codes and weights).
FLIPGUARD_AVX2 void cone_gemv__avx2(int32_t* dst, const int16_t* w, const int32_t* packed,
                                    const int32_t* pairs, int n, int64_t K) {
  int64_t k0 = 0;
  // 64 outputs at a time in eight registers: one broadcast of the pair's changes serves all eight.
  for (; k0 + 64 <= K; k0 += 64) {
    __m256i acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = load8(dst + k0 + 8 * r);
    for (int t = 0; t < n; ++t) {
      const __m256i d = _mm256_set1_epi32(packed[t]);
      const int16_t* wp = w + (int64_t{pairs[t]} * K + k0) * 2;
      for (int r = 0; r < 8; ++r)
        acc[r] = _mm256_add_epi32(
            acc[r], _mm256_madd_epi16(
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 16 * r)), d));
    }
    for (int r = 0; r < 8; ++r) store8(dst + k0 + 8 * r, acc[r]);
  }
  for (; k0 + 8 <= K; k0 += 8) {
    __m256i acc = load8(dst + k0);
    for (int t = 0; t < n; ++t) {
      const __m256i ww = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + (int64_t{pairs[t]} * K + k0) * 2));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(ww, _mm256_set1_epi32(packed[t])));
    }
    store8(dst + k0, acc);
  }
  if (k0 == K) return;
  for (int t = 0; t < n; ++t) {
    const int32_t d0 = static_cast<int16_t>(packed[t] & 0xffff);
    const int32_t d1 = static_cast<int16_t>(static_cast<uint32_t>(packed[t]) >> 16);
    const int16_t* wp = w + int64_t{pairs[t]} * K * 2;
    for (int64_t k = k0; k < K; ++k) dst[k] += d0 * wp[2 * k] + d1 * wp[2 * k + 1];
  }
}

FLIPGUARD_AVX2 void cone_fused_sum__avx2(const int32_t* hits, size_t nh, int32_t* delta,
                                         const int32_t* a, const int32_t* gold, int64_t K,
                                         bool relu, int rs, int32_t lo, int32_t hi, int32_t* csum) {
  const ShiftRound8 round(rs, lo, hi);
  const __m256i zero = _mm256_setzero_si256();
  int64_t k0 = 0;
  for (; k0 + 8 <= K; k0 += 8) {
    __m256i cs = load8(csum + k0);
    for (size_t h = 0; h < nh; ++h) {
      const int64_t at = int64_t{hits[h]} * K + k0;
      __m256i v = _mm256_add_epi32(load8(a + at), load8(delta + at));
      store8(delta + at, zero);
      if (relu) v = _mm256_max_epi32(v, zero);
      cs = _mm256_add_epi32(cs, _mm256_sub_epi32(round(v), load8(gold + at)));
    }
    store8(csum + k0, cs);
  }
  for (; k0 < K; ++k0)
    for (size_t h = 0; h < nh; ++h) {
      const int64_t at = int64_t{hits[h]} * K + k0;
      int32_t v = a[at] + delta[at];
      delta[at] = 0;
      if (relu && v < 0) v = 0;
      csum[k0] += shift_round(v, rs, lo, hi) - gold[at];
    }
}

FLIPGUARD_AVX2 int cone_position_shift__avx2(int32_t* dv, const int32_t* a, const int32_t* gold,
                                             int64_t K, bool relu, int rs, int32_t lo, int32_t hi,
                                             int32_t* ks, int32_t* ds) {
  const ShiftRound8 round(rs, lo, hi);
  const __m256i zero = _mm256_setzero_si256();
  int n = 0;
  int64_t k0 = 0;
  for (; k0 + 8 <= K; k0 += 8) {
    const __m256i moved = load8(dv + k0);
    if (_mm256_testz_si256(moved, moved)) continue;
    store8(dv + k0, zero);
    __m256i v = _mm256_add_epi32(load8(a + k0), moved);
    if (relu) v = _mm256_max_epi32(v, zero);
    const __m256i d = _mm256_sub_epi32(round(v), load8(gold + k0));
    // Lanes whose change is nonzero and whose accumulator moved (the others keep their code).
    const unsigned mask = nonzero_lanes(d) & nonzero_lanes(moved);
    if (mask) n = append_lanes(mask, d, k0, ks, ds, n);
  }
  if (k0 == K) return n;
  const int m = cone_position_shift__scalar(dv + k0, a + k0, gold + k0, K - k0, relu, rs, lo, hi,
                                            ks + n, ds + n);
  return shift_channels(k0, m, ks, n);
}

FLIPGUARD_AVX2 int cone_cell_shift__avx2(const int32_t* best, const int32_t* any,
                                         const int32_t* gold, int64_t K, int rs, int32_t lo,
                                         int32_t hi, int32_t* ks, int32_t* ds) {
  const ShiftRound8 round(rs, lo, hi);
  int n = 0;
  int64_t k0 = 0;
  for (; k0 + 8 <= K; k0 += 8) {
    const __m256i moved = load8(any + k0);
    if (_mm256_testz_si256(moved, moved)) continue;
    const __m256i d = _mm256_sub_epi32(round(load8(best + k0)), load8(gold + k0));
    // Lanes whose change is nonzero and whose window moved.
    const unsigned mask = nonzero_lanes(d) & nonzero_lanes(moved);
    if (mask) n = append_lanes(mask, d, k0, ks, ds, n);
  }
  if (k0 == K) return n;
  const int m =
      cone_cell_shift__scalar(best + k0, any + k0, gold + k0, K - k0, rs, lo, hi, ks + n, ds + n);
  return shift_channels(k0, m, ks, n);
}

FLIPGUARD_AVX2 void cone_max_into__avx2(int32_t* best, int32_t* any, const int32_t* a,
                                        const int32_t* dv, int64_t K, int32_t floor) {
  const __m256i fl = _mm256_set1_epi32(floor);
  int64_t k0 = 0;
  if (dv) {
    for (; k0 + 8 <= K; k0 += 8) {
      const __m256i d = load8(dv + k0);
      const __m256i v = _mm256_max_epi32(_mm256_add_epi32(load8(a + k0), d), fl);
      store8(best + k0, _mm256_max_epi32(load8(best + k0), v));
      store8(any + k0, _mm256_or_si256(load8(any + k0), d));
    }
  } else {
    for (; k0 + 8 <= K; k0 += 8)
      store8(best + k0, _mm256_max_epi32(load8(best + k0), _mm256_max_epi32(load8(a + k0), fl)));
  }
  if (k0 < K)
    cone_max_into__scalar(best + k0, any + k0, a + k0, dv ? dv + k0 : nullptr, K - k0, floor);
}

}  // namespace flipguard
