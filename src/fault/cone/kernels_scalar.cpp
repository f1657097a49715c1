// The cone engine's kernels in plain C++: the reference its AVX2 variants must equal, and what
// runs on processors without AVX2 or with EngineOptions::simd off.
#include "kernels.hpp"

#include <algorithm>

namespace flipguard {

void cone_gemv__scalar(int32_t* dst, const int16_t* w, const int32_t* packed, const int32_t* pairs,
                       int n, int64_t K) {
  for (int t = 0; t < n; ++t) {
    const int32_t d0 = static_cast<int16_t>(packed[t] & 0xffff);
    const int32_t d1 = static_cast<int16_t>(static_cast<uint32_t>(packed[t]) >> 16);
    const int16_t* wp = w + int64_t{pairs[t]} * K * 2;
    for (int64_t k = 0; k < K; ++k) dst[k] += d0 * wp[2 * k] + d1 * wp[2 * k + 1];
  }
}

void cone_fused_sum__scalar(const int32_t* hits, size_t nh, int32_t* delta, const int32_t* a,
                            const int32_t* gold, int64_t K, bool relu, int rs, int32_t lo,
                            int32_t hi, int32_t* csum) {
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

int cone_position_shift__scalar(int32_t* dv, const int32_t* a, const int32_t* gold, int64_t K,
                                bool relu, int rs, int32_t lo, int32_t hi, int32_t* ks,
                                int32_t* ds) {
  const int32_t half = int32_t{1} << (rs - 1);
  int n = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (dv[k] == 0) continue;
    int32_t v = a[k] + dv[k];
    dv[k] = 0;
    if (relu) v = std::max(v, 0);
    const int32_t d = std::clamp((v + half) >> rs, lo, hi) - gold[k];
    if (d != 0) {
      ks[n] = static_cast<int32_t>(k);
      ds[n++] = d;
    }
  }
  return n;
}

int cone_cell_shift__scalar(const int32_t* best, const int32_t* any, const int32_t* gold, int64_t K,
                            int rs, int32_t lo, int32_t hi, int32_t* ks, int32_t* ds) {
  const int32_t half = int32_t{1} << (rs - 1);
  int n = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (any[k] == 0) continue;
    const int32_t d = std::clamp((best[k] + half) >> rs, lo, hi) - gold[k];
    if (d != 0) {
      ks[n] = static_cast<int32_t>(k);
      ds[n++] = d;
    }
  }
  return n;
}

void cone_max_into__scalar(int32_t* best, int32_t* any, const int32_t* a, const int32_t* dv,
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

}  // namespace flipguard
