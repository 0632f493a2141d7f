#pragma once
// The CPU backend's reference attention (AttentionBatch: tandem/backend/op_params.hpp).
// Causal attention over a paged KV cache, for a batch of tokens from several sequences: token t
// belongs to the sequence whose block table is tables[t] and sits at positions[t]; it attends to
// positions [0, positions[t]] of that sequence, which must already be in the cache.
#include <cstdint>

#include "tandem/backend/op_params.hpp"

namespace tandem {

class ThreadPool;
class KvPool;

// GQA. q: [tokens, heads·head_dim] (roped); out: [tokens, heads·head_dim]. The cache holds a K
// plane and a V plane (rows of kv_heads·head_dim) per layer; query head h reads kv head
// h / (heads / kv_heads). Rows are read in the pool's KvType and widened (or dequantised) to
// float32 on the fly, once per (token, KV head) for all the query heads that share it.
void gqa_attention(ThreadPool& pool, const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                   const float* q, int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                   float* out);

// MLA in absorbed form. q_latent: [tokens, heads, kv_lora] (q_nope already multiplied into the
// latent space by kv_b's K part); q_rope: [tokens, heads, rope] (roped). The cache holds one plane
// whose rows are the normalised latent then the roped key. out: [tokens, heads, kv_lora], the
// attention-weighted latent (kv_b's V part is applied by the caller).
void mla_attention(ThreadPool& pool, const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                   const float* q_latent, const float* q_rope, int64_t heads, int64_t kv_lora,
                   int64_t rope_dim, float softmax_scale, float* out);

}  // namespace tandem
