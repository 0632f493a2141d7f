#pragma once
// RMSNorm over the last dimension: out = x / sqrt(mean(x²) + eps) · weight. In place allowed.
#include <cstdint>

namespace tandem {

// x and out: [rows, dim] with `stride` floats between rows (stride >= dim; heads use this).
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
              float* out);

}  // namespace tandem
