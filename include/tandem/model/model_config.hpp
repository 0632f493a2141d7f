#pragma once
// ModelConfig: one typed description of a model, read from an HF config.json (hub or
// transformers-5 key style) or from GGUF metadata. Everything the forward pass needs to know
// about shapes and behaviour lives here; nothing downstream reads config keys again.
#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

enum class Architecture { qwen3_moe, qwen2_moe, mixtral, deepseek_v2, deepseek_v3 };

enum class AttentionKind { gqa, mla };

enum class RouterKind {
  softmax_topk,        // softmax over all experts, top-k (Qwen, Mixtral, DeepSeek-V2 "greedy")
  softmax_group_topk,  // DeepSeek-V2 "group_limited_greedy": best n_group groups by max score
  sigmoid_noaux_tc,    // DeepSeek-V3: sigmoid, bias used for selection only, group-limited
};

enum class RopeLayout {
  neox,         // rotate the two halves of the head (HF rotate_half)
  interleaved,  // rotate adjacent pairs (DeepSeek's rope_interleave, GGUF "norm" rope)
};

enum class RopeScalingType { none, linear, yarn };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  Architecture architecture = Architecture::qwen3_moe;
  std::string architecture_name;  // "qwen3_moe", as config.json's model_type says it

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_nextn_predict_layers = 0;  // DeepSeek-V3 hub: MTP layers stored after the last (not run)
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;

  // Attention
  AttentionKind attention = AttentionKind::gqa;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;          // GQA
  bool qk_norm = false;          // Qwen3: RMSNorm on q and k per head
  bool qkv_bias = false;         // Qwen2: biases on q, k, v
  int64_t q_lora_rank = 0;       // MLA; 0 = plain q projection
  int64_t kv_lora_rank = 0;      // MLA latent width
  int64_t qk_nope_head_dim = 0;  // MLA
  int64_t qk_rope_head_dim = 0;  // MLA decoupled rope key width
  int64_t v_head_dim = 0;        // MLA
  double rope_theta = 10000.0;
  RopeLayout rope_layout = RopeLayout::neox;
  RopeScaling rope_scaling;

  // Feed-forward
  int64_t intermediate_size = 0;      // dense layers
  int64_t moe_intermediate_size = 0;  // one routed expert
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t num_shared_experts = 0;                // DeepSeek: shared expert width = n × moe_intermediate
  int64_t shared_expert_intermediate_size = 0;   // Qwen2-MoE's single shared expert
  bool shared_expert_gate = false;               // Qwen2-MoE: sigmoid gate on the shared expert
  int64_t first_k_dense = 0;                     // DeepSeek first_k_dense_replace
  int64_t moe_layer_freq = 1;                    // DeepSeek moe_layer_freq / Qwen decoder_sparse_step
  std::vector<int64_t> mlp_only_layers;          // Qwen: layers with a dense MLP
  RouterKind router = RouterKind::softmax_topk;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;
  int64_t topk_group = 1;

  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  bool is_moe_layer(int64_t layer) const;
  // Values per token per layer in the KV cache: 2·kv_heads·head_dim (GQA) or
  // kv_lora_rank + qk_rope_head_dim (MLA latent).
  int64_t kv_values_per_token_per_layer() const;
};

// Names accepted for an unknown-architecture error: "qwen3_moe, qwen2_moe, mixtral, ...".
std::string supported_architectures();

}  // namespace tandem
