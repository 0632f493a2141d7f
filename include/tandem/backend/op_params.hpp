#pragma once
// The plain-data parameters of Backend ops: values a backend of any device reads (or prepares
// its own tables from). The CPU backend's reference operators
// (tandem/backend/cpu/reference/) take them too.
#include <cstdint>

#include "tandem/model/model_config.hpp"

namespace tandem {

// A batch of tokens for attention and KV writes: token t belongs to the sequence whose block ids
// are row t of block_tables and sits at cache slot positions[t]; it attends to slots
// [0, positions[t]] of that sequence, which must already be in the cache.
struct AttentionBatch {
  int64_t tokens = 0;
  const int64_t* positions = nullptr;  // [tokens]: cache slots (the last one attended); backend memory
  // Token t's sequence as plain data in backend memory: its block ids are
  // block_tables[t·table_stride, +positions[t] / block_tokens + 1).
  const int32_t* block_tables = nullptr;
  int64_t table_stride = 0;
  int64_t max_context = 0;  // ≥ every positions[t] + 1
  // [tokens], backend memory: the KvPool open-rows slot of token t's sequence, for a pool with
  // per-channel (int4) key planes, whose open block's keys live there (host kernels); null otherwise.
  const int32_t* open_rows = nullptr;
  // Optional, for retention policies (host backends): when attention_rows[t] is set, token t's
  // attention probabilities, summed over its heads, are added to attention_rows[t][0, positions[t]].
  float* const* attention_rows = nullptr;  // [tokens]
  // Every token is of one sequence at increasing positions (one prompt chunk): device backends may
  // then share each cached tile among many query tokens (flash attention).
  bool one_sequence = false;
};

// Token t's open-rows slot, or -1 (KvPool::kNoOpenRows) when the batch has none.
inline int32_t open_rows_of(const AttentionBatch& batch, int64_t t) {
  return batch.open_rows != nullptr ? batch.open_rows[t] : -1;
}

// MLA's head shape: query heads, their no-position (nope) and rotary (rope) widths, the value width
// and the latent (kv_lora) width.
struct MlaShape {
  int64_t heads = 0, nope = 0, rope = 0, v = 0, kv_lora = 0;
};

// How a router chooses each token's experts (every RouterKind).
struct RoutingParams {
  RouterKind kind = RouterKind::softmax_topk;
  int64_t experts = 0;
  int64_t top_k = 0;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;
  int64_t topk_group = 1;

  static RoutingParams from_config(const ModelConfig& config);
};

// The add + RMSNorm a backend may fold into the linears that read it first (add_rms_norm_linears'
// arguments): normed = RMSNorm(hidden += delta, or hidden when delta is null) · weight over rows of
// dim. weight null: nothing to apply; the linears read normed as it is.
struct NormFirst {
  float* hidden = nullptr;
  const float* delta = nullptr;
  const float* weight = nullptr;
  int64_t dim = 0;
  double eps = 0;
  float* normed = nullptr;
};

// Softmax scale of MLA attention: 1/sqrt(qk_nope + qk_rope), times mscale(factor, mscale_all_dim)²
// under YaRN (DeepSeek-V2/V3).
double mla_softmax_scale(const ModelConfig& config);

// Backend::gqa_prologue's heads: q's `heads` and k's `kv_heads` heads of head_dim values per token
// row, normed by q_norm / k_norm over each head (none when null; eps) and rotated at `positions`; v's
// rows (kv_heads · head_dim) go into the cache beside k's.
struct GqaHeads {
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;  // read by gqa_prologue; gqa_projections' output
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  double eps = 0;
  const int64_t* positions = nullptr;
};

// Rotary position embedding, as the model configures it. A backend builds its tables from it
// (rope_tables, tandem/backend/rope_tables.hpp) once per distinct value.
struct RopeParams {
  RopeLayout layout = RopeLayout::neox;
  int64_t rotary_dim = 0;  // the rotated width: head_dim (GQA), qk_rope_head_dim (MLA)
  double theta = 10000.0;
  RopeScaling scaling;                  // none, linear, or YaRN with its factors
  int64_t max_position_embeddings = 0;  // YaRN's original context when scaling names none

  static RopeParams from_config(const ModelConfig& config, int64_t rotary_dim) {
    return {config.rope_layout, rotary_dim, config.rope_theta, config.rope_scaling,
            config.max_position_embeddings};
  }
  bool operator==(const RopeParams&) const = default;
};

}  // namespace tandem
