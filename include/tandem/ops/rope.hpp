#pragma once
// Rotary position embedding with the scalings users meet (none, linear, YaRN), in both layouts:
// NeoX half-split (rotate x[i] with x[i + d/2]) and interleaved pairs (x[2i] with x[2i+1]).
#include <cstdint>
#include <vector>

#include "tandem/model/model_config.hpp"

namespace tandem {

class RotaryEmbedding {
 public:
  // `rotary_dim`: the rotated width (head_dim for GQA, qk_rope_head_dim for MLA).
  RotaryEmbedding(const ModelConfig& config, int64_t rotary_dim);

  // Rotates `heads` vectors of each of `rows` tokens in place: vector h of token t starts at
  // data + t·row_stride + h·head_stride; positions[t] is token t's position.
  void apply(float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
             const int64_t* positions) const;

  // YaRN's magnitude correction applied to cos/sin (1 without YaRN).
  double attention_factor() const { return attention_factor_; }
  const std::vector<double>& inverse_frequencies() const { return inv_freq_; }
  RopeLayout layout() const { return layout_; }
  int64_t rotary_dim() const { return dim_; }

 private:
  int64_t dim_;
  RopeLayout layout_;
  std::vector<double> inv_freq_;  // [dim/2]
  double attention_factor_ = 1.0;
};

// YaRN's mscale(scale, m) = 0.1·m·ln(scale) + 1 for scale > 1, else 1.
double yarn_mscale(double scale, double mscale);

// Softmax scale of MLA attention: 1/sqrt(qk_nope + qk_rope), times mscale(factor, mscale_all_dim)²
// under YaRN (DeepSeek-V2/V3).
double mla_softmax_scale(const ModelConfig& config);

}  // namespace tandem
