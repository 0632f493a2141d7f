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

// The first statement of a kernel that launch_dependent starts (after prefetch_l2 hints, if any): it
// returns once the kernels before it on the stream have completed and their writes are visible (a
// no-op for a plain launch, and below sm_90). Nothing of another kernel's may be read or written
// before it. Then it lets the next dependent kernel be scheduled: once every block of this one has
// passed here, that kernel's blocks start and issue their own prefetches while this one runs — they
// cannot take a place this kernel's blocks still need (all of them are resident by then), and they
// read nothing before their own wait, which returns only when this kernel has completed.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks L2 for the 128-byte lines of [p, p + bytes), thread `worker` of `workers` taking every
// workers-th line: a hint (nothing waits for it, and no value is read), for weights a kernel reads
// after wait_for_prior_grids, issued before it so that HBM's latency overlaps the kernel before.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes, int worker, int workers) {
  if (bytes <= 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = begin / 128, last = (begin + static_cast<uintptr_t>(bytes) - 1) / 128;
  for (uintptr_t line = first + static_cast<uintptr_t>(worker); line <= last; line += static_cast<uintptr_t>(workers)) {
    const uintptr_t at = line * 128 < begin ? begin : line * 128;  // within [p, p + bytes)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(reinterpret_cast<const void*>(at))));
  }
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
