#pragma once
// SiLU-GLU of one output, silu(g) · u = g / (1 + e^−g) · u, with the CPU backend's operations
// rounded one at a time (no contraction into fused multiply-adds), so every kernel that applies it
// gives the same bits.
#include <cuda_runtime.h>

namespace tandem::cuda::detail {

__device__ __forceinline__ float silu_glu(float g, float u) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), u);
}

}  // namespace tandem::cuda::detail
