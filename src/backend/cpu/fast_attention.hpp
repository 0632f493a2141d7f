#pragma once
// GQA and MLA attention on the CPU as flash attention: each work item is one KV head (MLA: its one
// latent head) × a block of query tokens of one sequence (a prompt chunk) or one token (a decode
// batch of many sequences); it walks the cached keys in blocks of kernels::kAttendKeys, widening each
// block once (any KvType, through KvPool::values_at) for every query row that reads it, with an
// online softmax. When the items are fewer than the pool's threads (decode) and the contexts long,
// each item's keys are split into ranges whose partial softmax states are merged afterwards, so a
// decode step's attention uses every thread. The reference (backend/cpu/reference/attention.cpp)
// stays: it serves what this does not (attention rows for retention policies, a value width that is
// not a multiple of 16, more than kFlashMaxRows query heads per KV head), and the tests compare both.
#include <cstdint>
#include <mutex>
#include <vector>

#include "backend/cpu/kernels/attention_block.hpp"
#include "backend/cpu/kernels/isa_level.hpp"
#include "tandem/backend/op_params.hpp"

namespace tandem {

class KvPool;
class ThreadPool;

inline constexpr int64_t kFlashMaxRows = kernels::kAttendMaxRows;  // query rows of one work item at most

// Whether CpuFlashAttention serves this call (false: use the reference).
bool fast_gqa_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_heads, int64_t head_dim);
bool fast_mla_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_lora);

class CpuFlashAttention {
 public:
  CpuFlashAttention(ThreadPool& pool, kernels::IsaLevel level);

  // The same contracts as the reference gqa_attention and mla_attention.
  void gqa(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
           int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out);
  void mla(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent, const float* q_rope,
           int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale, float* out);

  // Keys per split at least (a split's fixed cost is one item's setup and its merge); tests lower it.
  static constexpr int64_t kMinSplitKeys = 256;
  void set_min_split_keys(int64_t keys) { min_split_keys_ = keys; }
  // Whether a prompt chunk's key blocks are widened once for all its items (the default) or by each
  // item that reads them; tests compare both.
  void set_share_prompt_keys(bool share) { share_prompt_keys_ = share; }

 private:
  struct Problem;
  void run(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const Problem& p, float softmax_scale);

  ThreadPool& pool_;
  kernels::AttendKeysFn attend_;
  int64_t min_split_keys_ = kMinSplitKeys;
  bool share_prompt_keys_ = true;
  std::mutex mutex_;                // partials_ and shared_keys_ serve one call at a time
  std::vector<float> partials_;     // split items' softmax states (grown, then reused)
  std::vector<float> shared_keys_;  // a prompt chunk's key blocks, widened once for all its items
};

}  // namespace tandem
