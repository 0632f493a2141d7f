// The host definition of the device's activation quantisation (q8_activations.cuh), for tests.
#include <cmath>
#include <cstdint>

#include "tandem/cuda/kernels.hpp"
#include "tandem/error.hpp"

namespace tandem::cuda {

void quantize_q8_reference(const float* x, int64_t n, int64_t group, float* dequantised) {
  if (group <= 0 || n % group != 0)
    throw Error(ErrorKind::invalid_argument, "quantize_q8_reference: n must be a multiple of the group");
  for (int64_t g = 0; g < n; g += group) {
    float amax = 0.f;
    for (int64_t i = g; i < g + group; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    const float d = amax / 127.f;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t i = g; i < g + group; ++i) dequantised[i] = d * static_cast<float>(std::nearbyint(x[i] * inv));
  }
}

}  // namespace tandem::cuda
