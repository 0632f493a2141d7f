#pragma once
// The two halves of MLA's weight absorption. kv_b is [heads·(nope + v), kv_lora]: per head, `nope`
// rows of its K part then `v` rows of its V part. Instead of expanding every cached latent into
// K and V, the query moves into latent space and the attention result leaves it:
//   q_latent[t, h] = W_K(h)ᵀ · q_nope[t, h]        scores use q_latent · latent
//   out[t, h]      = W_V(h) · attended_latent[t, h]
// Parallel over heads; each head's K or V rows are dequantised into per-thread scratch.
#include <cstdint>

#include "tandem/backend/op_params.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

// q: [tokens, heads·(nope + rope)] (nope part first in each head); q_latent: [tokens, heads, kv_lora].
void mla_absorb_query(ThreadPool& pool, const LinearWeight& kv_b, const MlaShape& shape, const float* q,
                      int64_t tokens, float* q_latent);

// attended: [tokens, heads, kv_lora]; out: [tokens, heads·v].
void mla_expand_values(ThreadPool& pool, const LinearWeight& kv_b, const MlaShape& shape,
                       const float* attended, int64_t tokens, float* out);

}  // namespace tandem
