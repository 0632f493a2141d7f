#pragma once
// Measured GPU rates for `tandem plan`: HBM read bandwidth (a kernel streaming a buffer) and
// pinned-host copy bandwidth each way over PCIe, best of a few runs timed with CUDA events.
#include <cstddef>

namespace tandem::cuda {

struct GpuBandwidth {
  double vram_read_gbps = 0;  // 1e9 bytes/s
  double host_to_device_gbps = 0;
  double device_to_host_gbps = 0;
};

// `vram_bytes`: the buffer the read kernel streams; `copy_bytes`: the pinned buffer copied each way.
// Throws Error (out_of_memory naming the sizes, or the CUDA call that failed).
GpuBandwidth measure_gpu_bandwidth(int device, size_t vram_bytes = size_t{1} << 30,
                                   size_t copy_bytes = size_t{256} << 20, int repeats = 5);

}  // namespace tandem::cuda
