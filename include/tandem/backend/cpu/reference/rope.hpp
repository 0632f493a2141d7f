#pragma once
// Rotary position embedding with the scalings users meet (none, linear, YaRN), in both layouts:
// NeoX half-split (rotate x[i] with x[i + d/2]) and interleaved pairs (x[2i] with x[2i+1]).
#include <cstdint>
#include <vector>

#include "tandem/backend/op_params.hpp"
#include "tandem/backend/rope_tables.hpp"
#include "tandem/model/model_config.hpp"

namespace tandem {

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const RopeParams& params);
  // `rotary_dim`: the rotated width (head_dim for GQA, qk_rope_head_dim for MLA).
  RotaryEmbedding(const ModelConfig& config, int64_t rotary_dim)
      : RotaryEmbedding(RopeParams::from_config(config, rotary_dim)) {}

  // Rotates `heads` vectors of each of `rows` tokens in place: vector h of token t starts at
  // data + t·row_stride + h·head_stride; positions[t] is token t's position.
  void apply(float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
             const int64_t* positions) const;

  // YaRN's magnitude correction applied to cos/sin (1 without YaRN).
  double attention_factor() const { return tables_.attention_factor; }
  const std::vector<double>& inverse_frequencies() const { return tables_.inverse_frequencies; }
  RopeLayout layout() const { return params_.layout; }
  int64_t rotary_dim() const { return params_.rotary_dim; }
  const RopeParams& params() const { return params_; }

 private:
  RopeParams params_;
  RopeTables tables_;
};

}  // namespace tandem
