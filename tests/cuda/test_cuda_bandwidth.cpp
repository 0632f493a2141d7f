// The GPU rates `tandem plan` measures: HBM streaming faster than PCIe, both plausible.
#include <catch2/catch.hpp>

#include "cuda_test_support.hpp"
#include "tandem/cuda/bandwidth_probe.hpp"
#include "tandem/error.hpp"

namespace tandem::test {

TEST_CASE("the GPU bandwidth probe measures HBM above PCIe and refuses odd sizes", "[cuda][plan]") {
  if (!have_gpu()) return;
  const cuda::GpuBandwidth b = cuda::measure_gpu_bandwidth(0, size_t{256} << 20, size_t{64} << 20, 3);
  INFO("HBM " << b.vram_read_gbps << " GB/s, H2D " << b.host_to_device_gbps << " GB/s, D2H "
              << b.device_to_host_gbps << " GB/s");
  CHECK(b.host_to_device_gbps > 1.0);
  CHECK(b.device_to_host_gbps > 1.0);
  CHECK(b.host_to_device_gbps < 1000.0);  // no PCIe or NVLink-C2C link is this fast: a timing bug
  CHECK(b.vram_read_gbps > 2 * b.host_to_device_gbps);
  CHECK(b.vram_read_gbps < 20000.0);
  CHECK_THROWS_AS(cuda::measure_gpu_bandwidth(0, size_t{1} << 20, size_t{2} << 20), Error);
  CHECK_THROWS_AS(cuda::measure_gpu_bandwidth(0, size_t{1} << 20, size_t{1} << 20, 0), Error);
}

}  // namespace tandem::test
