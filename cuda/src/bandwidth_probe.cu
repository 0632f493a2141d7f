#include <cuda_runtime.h>

#include <algorithm>

#include "launch.cuh"
#include "tandem/cuda/bandwidth_probe.hpp"

namespace tandem::cuda {
namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw Error(status == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
                text("CUDA: ", call, " failed: ", cudaGetErrorString(status)));
}

// Every thread reads 16-byte words in a grid-stride loop; the sum goes to `sink` only when it
// equals a value it never takes, so the reads cannot be dropped and nothing is written.
__global__ void read_words(const uint4* __restrict__ data, size_t words, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 w = data[i];
    acc ^= w.x ^ w.y ^ w.z ^ w.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

struct Owned {
  void* device = nullptr;
  void* pinned = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaStream_t stream = nullptr;
  ~Owned() {
    if (device) cudaFree(device);
    if (pinned) cudaFreeHost(pinned);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
  }
};

}  // namespace

GpuBandwidth measure_gpu_bandwidth(int device, size_t vram_bytes, size_t copy_bytes, int repeats) {
  if (vram_bytes < (size_t{1} << 20) || copy_bytes < (size_t{1} << 20) || copy_bytes > vram_bytes || repeats < 1)
    throw Error(ErrorKind::invalid_argument,
                text("GPU bandwidth probe: buffers of ", vram_bytes, " and ", copy_bytes,
                     " bytes (at least 1 MiB, the copy no larger) and ", repeats, " repeats (at least 1)"));
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  Owned o;
  const cudaError_t alloc = cudaMalloc(&o.device, vram_bytes + sizeof(unsigned));
  if (alloc == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw Error(ErrorKind::out_of_memory,
                text("GPU bandwidth probe: cannot allocate ", vram_bytes >> 20, " MiB on cuda:", device));
  }
  check(alloc, "cudaMalloc");
  check(cudaHostAlloc(&o.pinned, copy_bytes, cudaHostAllocDefault), "cudaHostAlloc (pinned host buffer)");
  check(cudaStreamCreateWithFlags(&o.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaEventCreate(&o.start), "cudaEventCreate");
  check(cudaEventCreate(&o.stop), "cudaEventCreate");
  check(cudaMemsetAsync(o.device, 1, vram_bytes, o.stream), "cudaMemsetAsync");
  std::fill_n(static_cast<unsigned char*>(o.pinned), copy_bytes, static_cast<unsigned char>(3));

  const auto best_gbps = [&](size_t bytes, auto&& enqueue) {
    enqueue();  // warm-up
    check(cudaStreamSynchronize(o.stream), "cudaStreamSynchronize");
    float best_ms = 0;
    for (int r = 0; r < repeats; ++r) {
      check(cudaEventRecord(o.start, o.stream), "cudaEventRecord");
      enqueue();
      check(cudaEventRecord(o.stop, o.stream), "cudaEventRecord");
      check(cudaEventSynchronize(o.stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, o.start, o.stop), "cudaEventElapsedTime");
      if (r == 0 || ms < best_ms) best_ms = ms;
    }
    return best_ms > 0 ? static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3) / 1e9 : 0.0;
  };

  GpuBandwidth out;
  const size_t words = vram_bytes / sizeof(uint4);
  auto* sink = reinterpret_cast<unsigned*>(static_cast<char*>(o.device) + vram_bytes);
  const unsigned blocks = static_cast<unsigned>(std::max(1, prop.multiProcessorCount) * 8);
  out.vram_read_gbps = best_gbps(words * sizeof(uint4), [&] {
    read_words<<<blocks, 512, 0, o.stream>>>(static_cast<const uint4*>(o.device), words, sink);
    detail::check_launch("read_words");
  });
  out.host_to_device_gbps = best_gbps(copy_bytes, [&] {
    check(cudaMemcpyAsync(o.device, o.pinned, copy_bytes, cudaMemcpyHostToDevice, o.stream), "cudaMemcpyAsync H2D");
  });
  out.device_to_host_gbps = best_gbps(copy_bytes, [&] {
    check(cudaMemcpyAsync(o.pinned, o.device, copy_bytes, cudaMemcpyDeviceToHost, o.stream), "cudaMemcpyAsync D2H");
  });
  return out;
}

}  // namespace tandem::cuda
