#include "tandem/backend/cpu/reference/router.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace tandem {
namespace {

// Indices of the k largest values (ties: lower index first, like a stable sort). NaN ranks as -inf
// (after every number, by index among themselves), so the order stays a strict weak order — a NaN
// compared with `>` would break it, and the sort with it — and matches the CUDA router's.
void top_k_indices(const double* values, int64_t n, int64_t k, int32_t* out, std::vector<int32_t>& order) {
  order.resize(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const auto key = [&](int32_t i) { return std::isnan(values[i]) ? -INFINITY : values[i]; };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    const double va = key(a), vb = key(b);
    return va > vb || (va == vb && a < b);
  });
  std::copy(order.begin(), order.begin() + k, out);
}

}  // namespace

void route_tokens_to_experts(const RoutingParams& params, const float* logits, int64_t tokens,
                             const float* selection_bias, int32_t* expert_ids, float* weights,
                             RouterScratch& scratch) {
  const int64_t n = params.experts, k = params.top_k;
  std::vector<double>& scores = scratch.scores;
  std::vector<double>& choice = scratch.choice;
  std::vector<double>& group_scores = scratch.group_scores;
  std::vector<int32_t>& kept_groups = scratch.kept_groups;
  std::vector<int32_t>& order = scratch.order;
  scores.resize(static_cast<size_t>(n));
  choice.resize(static_cast<size_t>(n));
  group_scores.resize(static_cast<size_t>(params.n_group));
  kept_groups.resize(static_cast<size_t>(params.topk_group));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * n;
    if (params.kind == RouterKind::sigmoid_noaux_tc) {
      for (int64_t e = 0; e < n; ++e) {
        scores[static_cast<size_t>(e)] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
        choice[static_cast<size_t>(e)] =
            scores[static_cast<size_t>(e)] + (selection_bias ? selection_bias[e] : 0.0);
      }
    } else {
      const double max_logit = *std::max_element(row, row + n);
      double sum = 0;
      for (int64_t e = 0; e < n; ++e) sum += scores[static_cast<size_t>(e)] = std::exp(row[e] - max_logit);
      for (int64_t e = 0; e < n; ++e) choice[static_cast<size_t>(e)] = scores[static_cast<size_t>(e)] /= sum;
    }

    if (params.kind != RouterKind::softmax_topk && params.n_group > 1) {
      // Group-limited choice: score each group (V3: sum of its top-2; V2: its max), keep the best
      // topk_group groups and zero the rest (as the reference does, with 0 rather than -inf).
      const int64_t per_group = n / params.n_group;
      for (int64_t g = 0; g < params.n_group; ++g) {
        const double* gs = choice.data() + g * per_group;
        if (params.kind == RouterKind::sigmoid_noaux_tc) {
          double best = -INFINITY, second = -INFINITY;
          for (int64_t i = 0; i < per_group; ++i) {
            if (gs[i] > best) {
              second = best;
              best = gs[i];
            } else if (gs[i] > second) {
              second = gs[i];
            }
          }
          group_scores[static_cast<size_t>(g)] = per_group > 1 ? best + second : best;
        } else {
          group_scores[static_cast<size_t>(g)] = *std::max_element(gs, gs + per_group);
        }
      }
      top_k_indices(group_scores.data(), params.n_group, params.topk_group, kept_groups.data(), order);
      for (int64_t g = 0; g < params.n_group; ++g) {
        if (std::find(kept_groups.begin(), kept_groups.end(), static_cast<int32_t>(g)) != kept_groups.end())
          continue;
        std::fill(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group, 0.0);
      }
    }

    int32_t* ids = expert_ids + t * k;
    float* w = weights + t * k;
    top_k_indices(choice.data(), n, k, ids, order);
    double sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += scores[static_cast<size_t>(ids[i])];
    const double denominator = params.kind == RouterKind::sigmoid_noaux_tc ? sum + 1e-20 : sum;
    for (int64_t i = 0; i < k; ++i) {
      double value = scores[static_cast<size_t>(ids[i])];
      if (params.norm_topk_prob) value /= denominator;
      w[i] = static_cast<float>(value * params.routed_scaling_factor);
    }
  }
}

}  // namespace tandem
