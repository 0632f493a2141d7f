#pragma once
// Choosing each token's experts from its router logits, for every router kind (see RouterKind).
#include <cstdint>
#include <vector>

#include "tandem/backend/op_params.hpp"

namespace tandem {

// logits: [tokens, experts]; selection_bias: [experts] or null (DeepSeek-V3's
// e_score_correction_bias, used to choose experts, never to weight them).
// expert_ids, weights: [tokens, top_k].
// Buffers routing reuses across calls (it runs every layer of every step); owned by the caller.
struct RouterScratch {
  std::vector<double> scores, choice, group_scores;
  std::vector<int32_t> kept_groups, order;
};

void route_tokens_to_experts(const RoutingParams& params, const float* logits, int64_t tokens,
                             const float* selection_bias, int32_t* expert_ids, float* weights,
                             RouterScratch& scratch);

}  // namespace tandem
