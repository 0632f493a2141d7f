#pragma once
// Expert deferral (KTransformers, SOSP'25): of each token's top-k routed experts, the `defer`
// lowest-weighted ones are computed apart and their output joins the residual stream one layer
// later, so in the hybrid engine the CPU can run them while the GPU already works on the next
// layer. Layer L+1 then reads a hidden state without them; the cost is measured with
// `tandem perplexity --defer-experts N` (docs/PERF.md). The last layer defers nothing.
#include <cstdint>

namespace tandem {

// Splits routing of `tokens` tokens (ids/weights [tokens, top_k]) into the kept part
// ([tokens, top_k - defer], in their original order) and the deferred part ([tokens, defer], the
// lowest weights; ties go to the later slot). Throws Error(invalid_argument) unless
// 0 < defer < top_k.
void split_deferred_experts(const int32_t* ids, const float* weights, int64_t tokens, int64_t top_k,
                            int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                            float* deferred_weights);

}  // namespace tandem
