#pragma once
// GQA attention on the CPU as flash attention: each work item is one KV head × a block of query
// tokens of one sequence (a prompt chunk) or one token (a decode batch of many sequences); it walks
// the cached keys in blocks of kernels::kAttendKeys, widening each block once (any KvType, through
// KvPool::values_at) for every query row that reads it, with an online softmax. The reference
// (backend/cpu/reference/attention.cpp) stays: it serves what this does not (attention rows for
// retention policies, a head width that is not a multiple of 16, very wide query groups), and the
// tests compare both.
#include <cstdint>

#include "backend/cpu/kernels/isa_level.hpp"
#include "tandem/backend/op_params.hpp"

namespace tandem {

class KvPool;
class ThreadPool;

// Whether fast_gqa_attention serves this call (false: use the reference).
bool fast_gqa_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_heads, int64_t head_dim);

// The same contract as the reference gqa_attention; uses the pool's per-worker scratch.
void fast_gqa_attention(ThreadPool& pool, kernels::IsaLevel level, const KvPool& kv, int64_t layer,
                        const AttentionBatch& batch, const float* q, int64_t heads, int64_t kv_heads,
                        int64_t head_dim, float softmax_scale, float* out);

}  // namespace tandem
