#pragma once
// The cone engine's inner loops, each a free function named by what it computes and the
// instruction set it uses: `__scalar` (plain C++, kernels_scalar.cpp) beside `__avx2`
// (kernels_avx2.cpp), which must give the same results element by element for every size
// (tests/test_kernels.cpp). The engine calls them through a ConeKernels table chosen once.
// Private to the library.
#include <cstddef>
#include <cstdint>

namespace flipguard {

/// dst[k] += sum over t < n of d0_t w[pairs[t]][k][0] + d1_t w[pairs[t]][k][1], k < K, where w is
/// [pairs][K][2] int16 and packed[t] holds d0_t (low 16 bits) and d1_t (high 16 bits): the
/// matrix-vector product of a weight tap with the changed channel pairs of one input position.
void cone_gemv__scalar(int32_t* dst, const int16_t* w, const int32_t* packed, const int32_t* pairs,
                       int n, int64_t K);
void cone_gemv__avx2(int32_t* dst, const int16_t* w, const int32_t* packed, const int32_t* pairs,
                     int n, int64_t K);

/// For every position p in hits[0, nh) and channel k < K (a, delta and gold are [positions][K]):
/// csum[k] += clamp((act(a + delta) + half) >> rs, lo, hi) - gold, then delta = 0; act is ReLU
/// or the identity, half = 2^(rs - 1), 1 <= rs <= 30. The change of the per-channel sums of a
/// site read by a summed last block, with int32 accumulators (the caller proves a + delta + half
/// fits int32).
void cone_fused_sum__scalar(const int32_t* hits, size_t nh, int32_t* delta, const int32_t* a,
                            const int32_t* gold, int64_t K, bool relu, int rs, int32_t lo,
                            int32_t hi, int32_t* csum);
void cone_fused_sum__avx2(const int32_t* hits, size_t nh, int32_t* delta, const int32_t* a,
                          const int32_t* gold, int64_t K, bool relu, int rs, int32_t lo, int32_t hi,
                          int32_t* csum);

/// The changed codes of one position: for every channel k < K with dv[k] != 0,
/// code = clamp((act(a[k] + dv[k]) + half) >> rs, lo, hi); where code != gold[k], appends k to ks
/// and code - gold[k] to ds (channels ascending); clears dv; returns how many it appended.
/// Channels with dv[k] == 0 keep their golden code (gold is the rounding of act(a)).
int cone_position_shift__scalar(int32_t* dv, const int32_t* a, const int32_t* gold, int64_t K,
                                bool relu, int rs, int32_t lo, int32_t hi, int32_t* ks,
                                int32_t* ds);
int cone_position_shift__avx2(int32_t* dv, const int32_t* a, const int32_t* gold, int64_t K,
                              bool relu, int rs, int32_t lo, int32_t hi, int32_t* ks, int32_t* ds);

/// The changed codes of one max pooling cell: for every channel k < K whose window changed
/// (any[k] != 0), code = clamp((best[k] + half) >> rs, lo, hi); where code != gold[k], appends k
/// to ks and code - gold[k] to ds (channels ascending); returns how many it appended.
int cone_cell_shift__scalar(const int32_t* best, const int32_t* any, const int32_t* gold, int64_t K,
                            int rs, int32_t lo, int32_t hi, int32_t* ks, int32_t* ds);
int cone_cell_shift__avx2(const int32_t* best, const int32_t* any, const int32_t* gold, int64_t K,
                          int rs, int32_t lo, int32_t hi, int32_t* ks, int32_t* ds);

/// One position of a max pooling window, every channel k < K:
/// best[k] = max(best[k], a[k] + dv[k], floor) and any[k] |= dv[k]; dv null: no change
/// (best[k] = max(best[k], a[k], floor)). floor is 0 after ReLU, INT32_MIN without.
void cone_max_into__scalar(int32_t* best, int32_t* any, const int32_t* a, const int32_t* dv,
                           int64_t K, int32_t floor);
void cone_max_into__avx2(int32_t* best, int32_t* any, const int32_t* a, const int32_t* dv,
                         int64_t K, int32_t floor);

/// One variant of every kernel.
struct ConeKernels {
  decltype(&cone_gemv__scalar) gemv;
  decltype(&cone_fused_sum__scalar) fused_sum;
  decltype(&cone_position_shift__scalar) position_shift;
  decltype(&cone_cell_shift__scalar) cell_shift;
  decltype(&cone_max_into__scalar) max_into;
};

/// Whether the processor runs AVX2 (checked once).
bool cpu_has_avx2();

/// The plain kernels, or with `vector` and a processor that has AVX2, the AVX2 ones.
const ConeKernels& cone_kernels(bool vector);

}  // namespace flipguard
