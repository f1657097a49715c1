// The choice between the cone engine's kernel variants, made once per process.
#include "kernels.hpp"

namespace flipguard {

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

const ConeKernels& cone_kernels(bool vector) {
  static const ConeKernels scalar{cone_gemv__scalar, cone_fused_sum__scalar,
                                  cone_position_shift__scalar, cone_cell_shift__scalar,
                                  cone_max_into__scalar};
  static const ConeKernels avx2{cone_gemv__avx2, cone_fused_sum__avx2, cone_position_shift__avx2,
                                cone_cell_shift__avx2, cone_max_into__avx2};
  return vector && cpu_has_avx2() ? avx2 : scalar;
}

}  // namespace flipguard
