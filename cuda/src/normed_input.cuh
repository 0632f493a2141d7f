#pragma once
// The input row of a decode linear that applies the layer's add + RMSNorm itself (norm_linears): one
// launch instead of the norm's own, whose ~5 µs a layer move 12 KB. Every block normalises the row
// into its shared memory with add_rms_norm's values and rounding (norm.cu: the sum of squares in
// double, each thread's values in the same order for the same block size).
#include <cstdint>

#include "launch.cuh"

namespace tandem::cuda::detail {

struct NormedInput {
  float* hidden = nullptr;       // the residual stream's row; null: the linear reads x as it is
  const float* delta = nullptr;  // added to hidden first (and written back), or null
  const float* weight = nullptr;
  float* normed = nullptr;  // the normalised row, for the layer's other readers (block 0 writes it)
  unsigned* arrivals = nullptr;  // zero between launches: counts the blocks done reading hidden
  double eps = 0;
};

// out [dim] (shared memory) = RMSNorm(hidden + delta) · weight, by the whole block. Every block
// reads hidden, so none may write it until all have read it: the last block to arrive at the
// counter writes hidden + delta back and resets the counter.
__device__ __forceinline__ void normalise_input(const NormedInput& n, int64_t dim, float* out) {
  __shared__ double partial[32];
  __shared__ bool last;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = n.hidden[i];
    if (n.delta != nullptr) v = v + n.delta[i];
    out[i] = v;
    sum += static_cast<double>(v) * v;
  }
  sum = block_sum(sum, partial);  // past its barrier, every thread of the block has read its values
  const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(dim) + n.eps));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = __fmul_rn(__fmul_rn(out[i], inv), n.weight[i]);
    out[i] = v;
    if (blockIdx.x == 0 && blockIdx.y == 0 && n.normed != nullptr) n.normed[i] = v;
  }
  if (n.delta != nullptr) {
    if (threadIdx.x == 0) {
      __threadfence();
      last = atomicAdd(n.arrivals, 1u) + 1 == gridDim.x * gridDim.y;
    }
    __syncthreads();
    if (last) {
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) n.hidden[i] = n.hidden[i] + n.delta[i];
      if (threadIdx.x == 0) *n.arrivals = 0;
    }
  }
  __syncthreads();
}

}  // namespace tandem::cuda::detail
