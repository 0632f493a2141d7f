#include "tandem/backend/cpu/reference/expert_deferral.hpp"

#include <fmt/format.h>

#include "tandem/error.hpp"

namespace tandem {

void split_deferred_experts(const int32_t* ids, const float* weights, int64_t tokens, int64_t top_k,
                            int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                            float* deferred_weights) {
  if (defer <= 0 || defer >= top_k || top_k > 64)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("expert deferral: {} of {} routed experts per token cannot be deferred "
                            "(at least 1, fewer than top-k, top-k at most 64)",
                            defer, top_k));
  const int64_t keep = top_k - defer;
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* id = ids + t * top_k;
    const float* w = weights + t * top_k;
    // Rank each slot: the number of slots that beat it (larger weight, or equal and earlier).
    // The `defer` slots with the highest rank are deferred. top_k is small (≤ 64): O(k²) is fine.
    int64_t kept = 0, deferred = 0;
    for (int64_t i = 0; i < top_k; ++i) {
      int64_t beaten_by = 0;
      for (int64_t j = 0; j < top_k; ++j)
        if (w[j] > w[i] || (w[j] == w[i] && j < i)) ++beaten_by;
      if (beaten_by < keep) {
        kept_ids[t * keep + kept] = id[i];
        kept_weights[t * keep + kept] = w[i];
        ++kept;
      } else {
        deferred_ids[t * defer + deferred] = id[i];
        deferred_weights[t * defer + deferred] = w[i];
        ++deferred;
      }
    }
  }
}

}  // namespace tandem
