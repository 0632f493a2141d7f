#pragma once
// A GPU's measured memory and PCIe rates (for `tandem plan`), or nothing where this build has no
// CUDA backend or the process sees no such GPU.
#include <optional>

namespace tandem {

struct GpuBandwidthRates {
  double vram_read_gbps = 0;  // 1e9 bytes/s, a kernel streaming 1 GiB
  double host_to_device_gbps = 0;  // pinned host memory, 256 MiB copies
  double device_to_host_gbps = 0;
};

// Takes about a second. Throws Error when the probe's buffers cannot be allocated or a CUDA call fails.
std::optional<GpuBandwidthRates> measure_gpu_bandwidth(int device);

}  // namespace tandem
