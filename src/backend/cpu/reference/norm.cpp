#include "tandem/backend/cpu/reference/norm.hpp"

#include <cmath>

namespace tandem {

void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
              float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * stride;
    float* yr = out + r * stride;
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

}  // namespace tandem
