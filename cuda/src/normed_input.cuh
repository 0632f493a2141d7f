#pragma once
// The input row of a decode linear that applies the layer's add + RMSNorm itself (norm_linears): one
// launch instead of the norm's own, whose ~5 µs a layer move 12 KB. Every block normalises the row
// into its shared memory with add_rms_norm's values and rounding (norm.cu: the sum of squares in
// double, each thread's values in the same order for the same block size).
#include <cstdint>

#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda::detail {

// The row comes from cuda::AddRmsNorm (kernels.hpp): hidden (null: the linear reads x as it is),
// delta (or null), the norm weight, dim, eps, normed (block 0 writes it for the layer's other
// readers) and the arrivals counter (zero between launches).
//
// out [dim] (shared memory) = RMSNorm(hidden + delta) · weight, by the whole block; each thread's
// values and weights are loaded together before the sum (one memory latency, not three). Every block
// reads hidden, so none may write it until all have read it: each block counts itself in at a
// device counter (count_in) without waiting for the answer, which finish_normed_input reads at the
// end of the kernel — the atomic's round trip (hundreds of blocks on one address) stays off the
// block's path to its loads — and the last block to count in writes hidden + delta back.
constexpr int kNormValuesPerThread = 8;
__device__ __forceinline__ void normalise_input(const AddRmsNorm& n, float* out) {
  const int64_t dim = n.dim;
  __shared__ double partial[32];
  double sum = 0;
  if (dim <= kNormValuesPerThread * static_cast<int64_t>(blockDim.x)) {
    float v[kNormValuesPerThread], w[kNormValuesPerThread];
#pragma unroll
    for (int k = 0; k < kNormValuesPerThread; ++k) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      v[k] = i < dim ? n.hidden[i] : 0.f;
      w[k] = i < dim ? n.weight[i] : 0.f;
      if (n.delta != nullptr && i < dim) v[k] = v[k] + n.delta[i];
    }
#pragma unroll
    for (int k = 0; k < kNormValuesPerThread; ++k) sum += static_cast<double>(v[k]) * v[k];
    sum = block_sum(sum, partial);  // past its barrier, every thread of the block has read its values
    const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(dim) + n.eps));
#pragma unroll
    for (int k = 0; k < kNormValuesPerThread; ++k) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (i < dim) out[i] = __fmul_rn(__fmul_rn(v[k], inv), w[k]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = n.hidden[i];
      if (n.delta != nullptr) v = v + n.delta[i];
      out[i] = v;
      sum += static_cast<double>(v) * v;
    }
    sum = block_sum(sum, partial);
    const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(dim) + n.eps));
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[i] = __fmul_rn(__fmul_rn(out[i], inv), n.weight[i]);
  }
  __syncthreads();
  if (blockIdx.x == 0 && blockIdx.y == 0 && n.normed != nullptr)
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) n.normed[i] = out[i];
}

// The block's count at the device counter, taken by thread 0 once the block has read hidden (after
// normalise_input), and best after the kernel's last barrier before its main loop: nothing waits for
// the answer until finish_normed_input.
__device__ __forceinline__ unsigned count_in(const AddRmsNorm& n) {
  return n.hidden != nullptr && n.delta != nullptr && threadIdx.x == 0 ? atomicAdd(n.arrivals, 1u) : 0u;
}

// Called by warp 0 (all its lanes) once the block's work is done, with count_in's ticket: the block
// that counted in last writes hidden + delta back and leaves the counter at zero.
__device__ __forceinline__ void finish_normed_input(const AddRmsNorm& n, unsigned ticket) {
  if (n.hidden == nullptr || n.delta == nullptr) return;
  ticket = __shfl_sync(0xffffffffu, ticket, 0);
  if (ticket + 1 != gridDim.x * gridDim.y) return;
  for (int64_t i = threadIdx.x; i < n.dim; i += 32) n.hidden[i] = n.hidden[i] + n.delta[i];
  if (threadIdx.x == 0) *n.arrivals = 0;
}

}  // namespace tandem::cuda::detail
