#pragma once
// Weights: every tensor the forward pass reads, by role, still in its stored type and place
// (views into the file mapping). Hub names and GGUF names both bind to these roles, so operators
// never see a file format. Unused roles are empty views.
#include <cstdint>
#include <vector>

#include "tandem/tensor/tensor_view.hpp"

namespace tandem {

struct LinearWeight {
  TensorView weight;     // [out_features, in_features]
  TensorView scale_inv;  // FP8 only: F32 [ceil(out/128), ceil(in/128)] block scales
  TensorView bias;       // [out_features] or empty

  bool empty() const { return weight.empty(); }
  int64_t out_features() const { return weight.shape.rank ? weight.shape[0] : 0; }
  int64_t in_features() const { return weight.shape.back(); }
};

// A layer's routed experts. Per-expert views: slices of GGUF's merged [E, out, in] tensors, or the
// hub's one tensor per expert.
struct ExpertWeights {
  std::vector<LinearWeight> gate;  // [moe_intermediate, hidden] each
  std::vector<LinearWeight> up;    // [moe_intermediate, hidden] each
  std::vector<LinearWeight> down;  // [hidden, moe_intermediate] each
  size_t count() const { return gate.size(); }
};

struct LayerWeights {
  TensorView attn_norm;
  TensorView ffn_norm;

  // GQA attention
  LinearWeight q, k, v, o;
  TensorView q_norm, k_norm;  // Qwen3 per-head RMSNorm weights [head_dim]

  // MLA attention (o is shared with GQA's slot)
  LinearWeight q_a;        // [q_lora_rank, hidden]; empty when q is plain (then `q` is used)
  TensorView q_a_norm;     // [q_lora_rank]
  LinearWeight q_b;        // [heads·(nope+rope), q_lora_rank]
  LinearWeight kv_a;       // [kv_lora_rank + rope, hidden]
  TensorView kv_a_norm;    // [kv_lora_rank]
  LinearWeight kv_b;       // [heads·(nope+v), kv_lora_rank]

  // Feed-forward: dense layers use ffn_*, MoE layers the rest.
  bool is_moe = false;
  LinearWeight ffn_gate, ffn_up, ffn_down;
  LinearWeight router;           // [experts, hidden]
  TensorView router_bias;        // DeepSeek-V3 e_score_correction_bias [experts]
  ExpertWeights experts;
  LinearWeight shared_gate, shared_up, shared_down;  // shared expert(s), fused as one
  LinearWeight shared_expert_gate;                   // Qwen2-MoE: [1, hidden] sigmoid gate
};

struct Weights {
  TensorView token_embedding;  // [vocab, hidden]
  TensorView output_norm;      // [hidden]
  LinearWeight output;         // [vocab, hidden] (the embedding when tied)
  std::vector<LayerWeights> layers;
};

}  // namespace tandem
