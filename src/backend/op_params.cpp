#include "tandem/backend/op_params.hpp"

#include <algorithm>
#include <cmath>

#include "tandem/backend/rope_tables.hpp"

namespace tandem {

RoutingParams RoutingParams::from_config(const ModelConfig& config) {
  RoutingParams p;
  p.kind = config.router;
  p.experts = config.num_experts;
  p.top_k = config.num_experts_per_tok;
  p.norm_topk_prob = config.norm_topk_prob;
  p.routed_scaling_factor = config.routed_scaling_factor;
  p.n_group = std::max<int64_t>(1, config.n_group);
  p.topk_group = std::max<int64_t>(1, config.topk_group);
  return p;
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

}  // namespace tandem
