#pragma once
// GQA and MLA attention on the CPU as flash attention: each work item is one KV head (MLA: its one
// latent head) × a block of query tokens of one sequence (a prompt chunk) or one token (a decode
// batch of many sequences); it walks the cached keys in blocks of kernels::kAttendKeys, widening each
// block once (any KvType, through KvPool::values_at) for every query row that reads it, with an
// online softmax. The reference (backend/cpu/reference/attention.cpp) stays: it serves what this does
// not (attention rows for retention policies, a value width that is not a multiple of 16, more than
// kFlashMaxRows query heads per KV head), and the tests compare both.
#include <cstdint>

#include "backend/cpu/kernels/isa_level.hpp"
#include "tandem/backend/op_params.hpp"

namespace tandem {

class KvPool;
class ThreadPool;

inline constexpr int64_t kFlashMaxRows = 128;  // query rows of one work item at most

// Whether the fast functions serve this call (false: use the reference).
bool fast_gqa_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_heads, int64_t head_dim);
bool fast_mla_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_lora);

// The same contracts as the reference gqa_attention and mla_attention; use the pool's per-worker
// scratch.
void fast_gqa_attention(ThreadPool& pool, kernels::IsaLevel level, const KvPool& kv, int64_t layer,
                        const AttentionBatch& batch, const float* q, int64_t heads, int64_t kv_heads,
                        int64_t head_dim, float softmax_scale, float* out);
void fast_mla_attention(ThreadPool& pool, kernels::IsaLevel level, const KvPool& kv, int64_t layer,
                        const AttentionBatch& batch, const float* q_latent, const float* q_rope, int64_t heads,
                        int64_t kv_lora, int64_t rope_dim, float softmax_scale, float* out);

}  // namespace tandem
