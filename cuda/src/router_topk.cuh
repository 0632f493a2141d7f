#pragma once
// One token's routing on the device, as route_tokens_to_experts (ops/router.cpp) for every RouterKind:
// the router kernel's body (glue.cu), and the tail of the router matrix's decode launch that routes
// the token once the matrix's last block has written its logits (linear.cu's route_lanes_kernel).
#include <cstdint>

#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda::detail {

// The order the routers choose in: a larger value first, ties to the lower index (a stable partial
// sort's order). NaN ranks as -inf, so every value has a distinct rank.
__device__ __forceinline__ bool ranks_before(double a, int64_t i, double b, int64_t j) {
  a = isnan(a) ? -INFINITY : a;
  b = isnan(b) ? -INFINITY : b;
  return a > b || (a == b && i < j);
}

// How many of values[0, n) rank before values[i]: its slot in a top-k.
__device__ __forceinline__ int64_t rank_of(const double* values, int64_t n, int64_t i) {
  const double v = values[i];
  int64_t rank = 0;
  for (int64_t j = 0; j < n; ++j) rank += ranks_before(values[j], j, v, i) ? 1 : 0;
  return rank;
}

// The doubles route_token keeps per token (scores, choices, group scores, the chosen scores).
__host__ __device__ constexpr int64_t route_arrays(const RouterSpec& spec) {
  return 2 * spec.experts + spec.n_group + spec.top_k;
}

// The whole block routes one token from its logits row [experts] into ids and weights [top_k], with
// `arrays` (route_arrays doubles, shared memory or scratch). Each expert counts the experts that rank
// before it, and the top_k write their own slot, so no round waits on the last; groups are ranked
// the same way. The weights' sum stays on one thread, in slot order, as the reference adds it. The
// logits are read through L2 (another block may have written them in this launch). The values do not
// depend on the block's size where it has a thread per expert: the extra threads add zeros.
__device__ __forceinline__ void route_token(const RouterSpec& spec, const float* row, const float* bias,
                                            double* arrays, int32_t* ids, float* weights) {
  __shared__ float max_scratch[32];
  __shared__ double sum_scratch[32];
  __shared__ double picked_sum;
  const int64_t n = spec.experts, k = spec.top_k, groups = spec.n_group;
  const int64_t tid = threadIdx.x, threads = blockDim.x;
  double* scores = arrays;
  double* choice = scores + n;
  double* group_scores = choice + n;
  double* picked = group_scores + groups;  // the chosen experts' scores, by slot
  if (spec.kind == 2) {
    for (int64_t e = tid; e < n; e += threads) {
      scores[e] = 1.0 / (1.0 + exp(-static_cast<double>(__ldcg(row + e))));
      choice[e] = scores[e] + (bias ? static_cast<double>(bias[e]) : 0.0);
    }
  } else {
    float max_logit = -INFINITY;
    for (int64_t e = tid; e < n; e += threads) max_logit = fmaxf(max_logit, __ldcg(row + e));
    max_logit = block_max(max_logit, max_scratch);
    double part = 0;
    for (int64_t e = tid; e < n; e += threads) {
      scores[e] = exp(static_cast<double>(__ldcg(row + e)) - static_cast<double>(max_logit));
      part += scores[e];
    }
    const double sum = block_sum(part, sum_scratch);
    for (int64_t e = tid; e < n; e += threads) choice[e] = scores[e] /= sum;
  }
  __syncthreads();
  if (spec.kind != 0 && groups > 1) {
    const int64_t per_group = n / groups;
    for (int64_t g = tid; g < groups; g += threads) {
      const double* gs = choice + g * per_group;
      double best = -INFINITY, second = -INFINITY;
      for (int64_t i = 0; i < per_group; ++i) {
        if (gs[i] > best) {
          second = best;
          best = gs[i];
        } else if (gs[i] > second) {
          second = gs[i];
        }
      }
      group_scores[g] = spec.kind == 2 && per_group > 1 ? best + second : best;
    }
    __syncthreads();
    // A group outside the topk_group best has its experts' choice zeroed (as the reference: 0, not -inf).
    for (int64_t e = tid; e < n; e += threads)
      if (rank_of(group_scores, groups, e / per_group) >= spec.topk_group) choice[e] = 0.0;
    __syncthreads();
  }
  for (int64_t e = tid; e < n; e += threads) {
    const int64_t slot = rank_of(choice, n, e);
    if (slot < k) {
      ids[slot] = static_cast<int32_t>(e);
      picked[slot] = scores[e];
    }
  }
  __syncthreads();
  if (tid == 0) {
    double sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += picked[i];
    picked_sum = sum;
  }
  __syncthreads();
  const double denominator = spec.kind == 2 ? picked_sum + 1e-20 : picked_sum;
  for (int64_t i = tid; i < k; i += threads) {
    double value = picked[i];
    if (spec.norm_topk_prob) value /= denominator;
    weights[i] = static_cast<float>(value * spec.routed_scaling_factor);
  }
}

}  // namespace tandem::cuda::detail
