#pragma once
// What every kernel file shares: the native stream, launch checks, grid sizes, warp reductions.
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "tandem/cuda/cuda_device.hpp"
#include "text.cuh"
#include "tandem/error.hpp"

namespace tandem::cuda::detail {

using cuda::text;

inline cudaStream_t native(Stream& s) { return static_cast<cudaStream_t>(s.native()); }

inline void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw Error(ErrorKind::internal, text("CUDA: launching ", kernel, " failed: ", cudaGetErrorString(status)));
}

// Lets `kernel` take `bytes` of dynamic shared memory (past the default 48 KiB), before its launch.
template <typename Kernel>
void opt_in_shared_memory(Kernel kernel, size_t bytes, const char* what) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) != cudaSuccess)
    check_launch(what);
}

// The first statement of a kernel that launch_dependent starts: it returns once the kernels before
// it on the stream have completed and their writes are visible (a no-op for a plain launch, and
// below sm_90). Nothing of another kernel's may be read or written before it.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared, stream>>>(args...), with programmatic stream serialization where the
// stream asks for it (Stream::set_dependent_launch): the kernel's blocks may be scheduled while the
// previous kernel finishes, so that its launch latency overlaps that kernel's tail. Only for
// kernels that begin with wait_for_prior_grids().
template <typename... Params, typename... Args>
void launch_dependent(Stream& stream, const char* what, void (*kernel)(Params...), dim3 grid, dim3 block,
                      size_t shared, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch_dependent: one argument per kernel parameter");
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = native(stream);
  cudaLaunchAttribute attribute[1] = {};
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  if (stream.dependent_launch()) {
    config.attrs = attribute;
    config.numAttrs = 1;
  }
  const bool injected = stream.take_launch_fault();
  if (injected) config.blockDim = dim3(4096);  // past every GPU's 1,024 threads a block
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the error is thrown here
    throw Error(ErrorKind::internal, text("CUDA: launching ", what, " failed: ", cudaGetErrorString(status),
                                          injected ? " (injected: TANDEM_CUDA_FAULT_AT_LAUNCH)" : ""));
  }
}

// A grid dimension, refused (never truncated) past CUDA's limit.
inline unsigned grid_dim(int64_t n, const char* what, int64_t limit = 0x7fffffff) {
  if (n <= 0 || n > limit)
    throw Error(ErrorKind::out_of_range, text("CUDA: ", what, " needs ", n, " blocks, outside [1, ", limit, "]"));
  return static_cast<unsigned>(n);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over a block whose size is a multiple of 32 (≤ 1024); every thread gets the total.
template <typename T>
__device__ T block_sum(T v, T* shared32) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += shared32[w];
  return total;
}
__device__ __forceinline__ float block_max(float v, float* shared32) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, shared32[w]);
  return m;
}

}  // namespace tandem::cuda::detail
