#pragma once
// The plain-data parameters of Backend ops: values a backend of any device reads (or prepares
// its own tables from), no host objects.
#include <cstdint>

#include "tandem/model/model_config.hpp"

namespace tandem {

// Rotary position embedding, as the model configures it. A backend builds its tables from it
// (rope_tables, tandem/backend/rope_tables.hpp) once per distinct value.
struct RopeParams {
  RopeLayout layout = RopeLayout::neox;
  int64_t rotary_dim = 0;  // the rotated width: head_dim (GQA), qk_rope_head_dim (MLA)
  double theta = 10000.0;
  RopeScaling scaling;                  // none, linear, or YaRN with its factors
  int64_t max_position_embeddings = 0;  // YaRN's original context when scaling names none

  static RopeParams from_config(const ModelConfig& config, int64_t rotary_dim) {
    return {config.rope_layout, rotary_dim, config.rope_theta, config.rope_scaling,
            config.max_position_embeddings};
  }
  bool operator==(const RopeParams&) const = default;
};

}  // namespace tandem
