// Validation of a ModelConfig from any source: what the forward pass and the loader assume.
#include <string>

#include "tandem/error.hpp"
#include "tandem/model/config_readers.hpp"

namespace tandem {
namespace {

// Limits far beyond any real model that keep products of sizes inside int64.
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxExperts = 1 << 16;

[[noreturn]] void invalid(const std::string& source, const std::string& what) {
  throw Error(ErrorKind::corrupt_file, source + ": invalid model config: " + what);
}

void check_range(const std::string& source, const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    invalid(source, std::string(name) + " = " + std::to_string(value) + " is outside [" + std::to_string(lo) +
                        ", " + std::to_string(hi) + "]");
}

}  // namespace

void validate_model_config(const ModelConfig& c, const std::string& source) {
  check_range(source, "vocab_size", c.vocab_size, 1, kMaxDim);
  check_range(source, "hidden_size", c.hidden_size, 1, kMaxDim);
  check_range(source, "num_hidden_layers", c.num_layers, 1, kMaxLayers);
  check_range(source, "num_nextn_predict_layers", c.num_nextn_predict_layers, 0, kMaxLayers);
  check_range(source, "max_position_embeddings", c.max_position_embeddings, 1, int64_t{1} << 30);
  check_range(source, "num_attention_heads", c.num_heads, 1, kMaxDim);
  check_range(source, "num_key_value_heads", c.num_kv_heads, 1, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    invalid(source, "num_attention_heads " + std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads " +
                        std::to_string(c.num_kv_heads));
  check_range(source, "head_dim", c.head_dim, 1, kMaxDim);
  if (c.rms_norm_eps <= 0 || !(c.rms_norm_eps < 1)) invalid(source, "rms_norm_eps must be in (0, 1)");
  if (!(c.rope_theta > 0) || c.rope_theta > 1e12) invalid(source, "rope_theta must be positive");
  if (c.attention == AttentionKind::mla) {
    check_range(source, "q_lora_rank", c.q_lora_rank, 0, kMaxDim);
    check_range(source, "kv_lora_rank", c.kv_lora_rank, 1, kMaxDim);
    check_range(source, "qk_nope_head_dim", c.qk_nope_head_dim, 1, kMaxDim);
    check_range(source, "qk_rope_head_dim", c.qk_rope_head_dim, 2, kMaxDim);
    check_range(source, "v_head_dim", c.v_head_dim, 1, kMaxDim);
    if (c.qk_rope_head_dim % 2) invalid(source, "qk_rope_head_dim must be even");
  } else if (c.head_dim % 2) {
    invalid(source, "head_dim " + std::to_string(c.head_dim) + " must be even for rotary embeddings");
  }
  const auto& rs = c.rope_scaling;
  if (rs.type != RopeScalingType::none) {
    if (!(rs.factor > 0) || rs.factor > 1e6) invalid(source, "rope scaling factor must be positive");
    if (rs.type == RopeScalingType::yarn) {
      check_range(source, "original_max_position_embeddings", rs.original_max_position_embeddings, 1, int64_t{1} << 30);
      if (!(rs.beta_fast > 0) || !(rs.beta_slow > 0)) invalid(source, "yarn beta_fast and beta_slow must be positive");
    }
  }

  check_range(source, "num_experts", c.num_experts, 1, kMaxExperts);
  check_range(source, "num_experts_per_tok", c.num_experts_per_tok, 1, c.num_experts);
  check_range(source, "moe_intermediate_size", c.moe_intermediate_size, 1, kMaxDim);
  check_range(source, "intermediate_size", c.intermediate_size, 0, kMaxDim);
  check_range(source, "moe_layer_freq", c.moe_layer_freq, 1, kMaxLayers);
  check_range(source, "first_k_dense_replace", c.first_k_dense, 0, c.num_layers);
  check_range(source, "n_shared_experts", c.num_shared_experts, 0, kMaxExperts);
  check_range(source, "shared_expert_intermediate_size", c.shared_expert_intermediate_size, 0, kMaxDim);
  for (int64_t layer : c.mlp_only_layers) check_range(source, "mlp_only_layers entry", layer, 0, c.num_layers - 1);
  bool any_dense = false;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) any_dense = any_dense || !c.is_moe_layer(layer);
  if (any_dense && c.intermediate_size <= 0) invalid(source, "dense layers need intermediate_size > 0");
  if (!(c.routed_scaling_factor > 0) || c.routed_scaling_factor > 1e6)
    invalid(source, "routed_scaling_factor must be positive");

  check_range(source, "n_group", c.n_group, 1, c.num_experts);
  check_range(source, "topk_group", c.topk_group, 1, c.n_group);
  if (c.num_experts % c.n_group != 0)
    invalid(source, "n_group " + std::to_string(c.n_group) + " does not divide the " + std::to_string(c.num_experts) +
                        " experts");
  if (c.router != RouterKind::softmax_topk &&
      c.num_experts_per_tok > c.topk_group * (c.num_experts / c.n_group))
    invalid(source, "num_experts_per_tok " + std::to_string(c.num_experts_per_tok) + " exceeds the experts in " +
                        std::to_string(c.topk_group) + " of " + std::to_string(c.n_group) + " groups");
}

}  // namespace tandem
