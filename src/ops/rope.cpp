#include "tandem/ops/rope.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace tandem {

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

double mla_softmax_scale(const ModelConfig& config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(config.qk_nope_head_dim + config.qk_rope_head_dim));
  const RopeScaling& rs = config.rope_scaling;
  if (rs.type != RopeScalingType::none && rs.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(rs.factor, rs.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config, int64_t rotary_dim)
    : dim_(rotary_dim), layout_(config.rope_layout) {
  const double base = config.rope_theta;
  const int64_t half = dim_ / 2;
  inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq_[static_cast<size_t>(i)] =
        1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim_));

  const RopeScaling& rs = config.rope_scaling;
  if (rs.type == RopeScalingType::linear) {
    for (double& f : inv_freq_) f /= rs.factor;
  } else if (rs.type == RopeScalingType::yarn) {
    // As HF transformers 5 computes it: frequencies interpolate by the configured factor (not by
    // max_position_embeddings / original, which the tiny DeepSeek-V3 golden rules out), and the
    // ramp between beta_fast and beta_slow rotations, truncated to whole dimensions, blends
    // interpolated and original frequencies.
    const double factor = rs.factor;
    const double original =
        static_cast<double>(rs.original_max_position_embeddings > 0 ? rs.original_max_position_embeddings
                                                                    : config.max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return static_cast<double>(dim_) * std::log(original / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(base));
    };
    double low = std::max(0.0, std::floor(correction_dim(rs.beta_fast)));
    double high = std::min(static_cast<double>(dim_ - 1), std::ceil(correction_dim(rs.beta_slow)));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double extrapolation_weight = 1.0 - ramp;
      double& f = inv_freq_[static_cast<size_t>(i)];
      f = (f / factor) * (1.0 - extrapolation_weight) + f * extrapolation_weight;
    }
    if (rs.mscale != 0.0 && rs.mscale_all_dim != 0.0)
      attention_factor_ = yarn_mscale(factor, rs.mscale) / yarn_mscale(factor, rs.mscale_all_dim);
    else
      attention_factor_ = yarn_mscale(factor, 1.0);
  }
}

void RotaryEmbedding::apply(float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
                            const int64_t* positions) const {
  const int64_t half = dim_ / 2;
  for (int64_t t = 0; t < rows; ++t) {
    const double pos = static_cast<double>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const double angle = inv_freq_[static_cast<size_t>(i)] * pos;
      const float c = static_cast<float>(std::cos(angle) * attention_factor_);
      const float s = static_cast<float>(std::sin(angle) * attention_factor_);
      for (int64_t h = 0; h < heads; ++h) {
        float* v = data + t * row_stride + h * head_stride;
        const int64_t a = layout_ == RopeLayout::neox ? i : 2 * i;
        const int64_t b = layout_ == RopeLayout::neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace tandem
