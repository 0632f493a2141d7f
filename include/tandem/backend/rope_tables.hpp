#pragma once
// The tables every backend's RoPE rotates with, computed on the host from RopeParams as HF
// transformers computes them; header-only so that device backends (which do not link the engine)
// build the same doubles.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "tandem/backend/op_params.hpp"

namespace tandem {

// YaRN's mscale(scale, m) = 0.1·m·ln(scale) + 1 for scale > 1, else 1.
inline double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

struct RopeTables {
  std::vector<double> inverse_frequencies;  // [rotary_dim / 2]: the angle of pair i is position · f[i]
  double attention_factor = 1.0;            // YaRN's magnitude correction of cos/sin (1 without YaRN)
};

inline RopeTables rope_tables(const RopeParams& p) {
  RopeTables t;
  const double base = p.theta;
  const int64_t dim = p.rotary_dim, half = dim / 2;
  std::vector<double>& inv_freq = t.inverse_frequencies;
  inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] =
        1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));

  const RopeScaling& rs = p.scaling;
  if (rs.type == RopeScalingType::linear) {
    for (double& f : inv_freq) f /= rs.factor;
  } else if (rs.type == RopeScalingType::yarn) {
    // As HF transformers 5 computes it: frequencies interpolate by the configured factor (not by
    // max_position_embeddings / original, which the tiny DeepSeek-V3 golden rules out), and the
    // ramp between beta_fast and beta_slow rotations, truncated to whole dimensions, blends
    // interpolated and original frequencies.
    const double factor = rs.factor;
    const double original =
        static_cast<double>(rs.original_max_position_embeddings > 0 ? rs.original_max_position_embeddings
                                                                    : p.max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return static_cast<double>(dim) * std::log(original / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(base));
    };
    const double low = std::max(0.0, std::floor(correction_dim(rs.beta_fast)));
    double high = std::min(static_cast<double>(dim - 1), std::ceil(correction_dim(rs.beta_slow)));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double extrapolation_weight = 1.0 - ramp;
      double& f = inv_freq[static_cast<size_t>(i)];
      f = (f / factor) * (1.0 - extrapolation_weight) + f * extrapolation_weight;
    }
    if (rs.mscale != 0.0 && rs.mscale_all_dim != 0.0)
      t.attention_factor = yarn_mscale(factor, rs.mscale) / yarn_mscale(factor, rs.mscale_all_dim);
    else
      t.attention_factor = yarn_mscale(factor, 1.0);
  }
  return t;
}

}  // namespace tandem
