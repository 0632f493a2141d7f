#pragma once
// Choosing each token's experts from its router logits, for every router kind (see RouterKind).
#include <cstdint>
#include <vector>

#include "tandem/model/model_config.hpp"

namespace tandem {

struct RoutingParams {
  RouterKind kind = RouterKind::softmax_topk;
  int64_t experts = 0;
  int64_t top_k = 0;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;
  int64_t topk_group = 1;

  static RoutingParams from_config(const ModelConfig& config);
};

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
