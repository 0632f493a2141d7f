#include "tandem/backend/gpu_bandwidth.hpp"

#include "tandem/backend/cuda_backend.hpp"

#ifdef TANDEM_WITH_CUDA
#include "tandem/cuda/bandwidth_probe.hpp"
#endif

namespace tandem {

std::optional<GpuBandwidthRates> measure_gpu_bandwidth(int device) {
#ifdef TANDEM_WITH_CUDA
  if (device < 0 || device >= cuda_device_count()) return std::nullopt;
  const cuda::GpuBandwidth b = cuda::measure_gpu_bandwidth(device);
  return GpuBandwidthRates{b.vram_read_gbps, b.host_to_device_gbps, b.device_to_host_gbps};
#else
  (void)device;
  return std::nullopt;
#endif
}

}  // namespace tandem
