#pragma once
// Activation rows staged in shared memory for the GEMV kernels (linear.cu, moe.cu): 33 floats per
// 32 values, so the 32 lanes of a warp, each reading value j of its own 32-value chunk c, hit bank
// (c + j) mod 32 and never share one. Read straight from global memory, the same pattern touches 32
// cache lines per warp load. Also the constants both kernels' callers size launches with.
#include <cstdint>

namespace tandem::cuda::detail {

constexpr int64_t kSharedBytes = 48 * 1024;  // the default dynamic shared-memory limit of a block
constexpr int64_t kFp8Block = 128;           // FP8 weights: one scale per 128×128 block

__device__ __forceinline__ int64_t padded_index(int64_t i) { return (i >> 5) * 33 + (i & 31); }
__host__ __device__ constexpr int64_t padded_floats(int64_t n) { return (n + 31) / 32 * 33; }

// `count` rows of n floats, `stride` apart in x, into xs (rows padded_floats(n) apart); the whole
// block takes part and waits for the others.
__device__ __forceinline__ void stage_rows(const float* x, int64_t stride, int count, int64_t n, float* xs) {
  for (int r = 0; r < count; ++r)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xs[r * padded_floats(n) + padded_index(i)] = x[r * stride + i];
  __syncthreads();
}

}  // namespace tandem::cuda::detail
