#include "tandem/backend/cpu/reference/rope.hpp"

#include <algorithm>
#include <cmath>

namespace tandem {

RotaryEmbedding::RotaryEmbedding(const RopeParams& params) : params_(params), tables_(rope_tables(params)) {}

void RotaryEmbedding::apply(float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
                            const int64_t* positions) const {
  const int64_t half = params_.rotary_dim / 2;
  const std::vector<double>& inv_freq = tables_.inverse_frequencies;
  const double attention_factor = tables_.attention_factor;
  const RopeLayout layout = params_.layout;
  for (int64_t t = 0; t < rows; ++t) {
    const double pos = static_cast<double>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const double angle = inv_freq[static_cast<size_t>(i)] * pos;
      const float c = static_cast<float>(std::cos(angle) * attention_factor);
      const float s = static_cast<float>(std::sin(angle) * attention_factor);
      for (int64_t h = 0; h < heads; ++h) {
        float* v = data + t * row_stride + h * head_stride;
        const int64_t a = layout == RopeLayout::neox ? i : 2 * i;
        const int64_t b = layout == RopeLayout::neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace tandem
