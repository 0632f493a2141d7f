#pragma once
// Shared by the model tests: the fixture models and a field-by-field config comparison.
#include <cstdint>
#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "tandem/model/model_config.hpp"

namespace tandem::test {

struct FixtureModel {
  std::string folder;                   // relative to the fixtures root: "tiny/qwen3moe"
  std::vector<std::string> gguf_files;  // file names inside the folder
};

inline const std::vector<FixtureModel>& fixture_models() {
  static const std::vector<FixtureModel> models = {
      {"tiny/qwen3moe", {"qwen3moe-f32.gguf", "qwen3moe-bf16.gguf", "qwen3moe-q8_0.gguf"}},
      {"tiny/qwen2moe", {"qwen2moe-f32.gguf", "qwen2moe-bf16.gguf", "qwen2moe-q8_0.gguf"}},
      {"tiny/mixtral", {}},
      {"tiny/deepseekv2lite", {"deepseekv2lite-f32.gguf", "deepseekv2lite-bf16.gguf", "deepseekv2lite-q8_0.gguf"}},
      {"tiny/deepseekv3", {"deepseekv3-f32.gguf", "deepseekv3-bf16.gguf", "deepseekv3-q8_0.gguf"}},
      {"tiny/deepseekv3-fp8", {}},
      {"small/qwen3moe",
       {"qwen3moe-q4_k_m.gguf", "qwen3moe-q5_k_m.gguf", "qwen3moe-q6_k.gguf", "qwen3moe-q8_0.gguf", "qwen3moe-iq4_xs.gguf"}},
      {"small/deepseekv3",
       {"deepseekv3-q4_k_m.gguf", "deepseekv3-q5_k_m.gguf", "deepseekv3-q6_k.gguf", "deepseekv3-q8_0.gguf",
        "deepseekv3-iq4_xs.gguf"}},
  };
  return models;
}

inline bool close(double a, double b) { return std::fabs(a - b) <= 1e-6 * std::max(std::fabs(a), std::fabs(b)); }

// Every field the forward pass reads (not bos/eos: GGUF takes them from its own tokenizer).
inline void require_same_forward_config(const ModelConfig& a, const ModelConfig& b) {
  CHECK(a.architecture == b.architecture);
  CHECK(a.vocab_size == b.vocab_size);
  CHECK(a.hidden_size == b.hidden_size);
  CHECK(a.num_layers == b.num_layers);
  CHECK(a.max_position_embeddings == b.max_position_embeddings);
  CHECK(close(a.rms_norm_eps, b.rms_norm_eps));
  CHECK(a.tie_word_embeddings == b.tie_word_embeddings);
  CHECK(a.attention == b.attention);
  CHECK(a.num_heads == b.num_heads);
  CHECK(a.num_kv_heads == b.num_kv_heads);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.qk_norm == b.qk_norm);
  CHECK(a.qkv_bias == b.qkv_bias);
  CHECK(a.q_lora_rank == b.q_lora_rank);
  CHECK(a.kv_lora_rank == b.kv_lora_rank);
  CHECK(a.qk_nope_head_dim == b.qk_nope_head_dim);
  CHECK(a.qk_rope_head_dim == b.qk_rope_head_dim);
  CHECK(a.v_head_dim == b.v_head_dim);
  CHECK(close(a.rope_theta, b.rope_theta));
  CHECK(a.rope_layout == b.rope_layout);
  CHECK(a.rope_scaling.type == b.rope_scaling.type);
  if (a.rope_scaling.type != RopeScalingType::none) {
    CHECK(close(a.rope_scaling.factor, b.rope_scaling.factor));
    CHECK(a.rope_scaling.original_max_position_embeddings == b.rope_scaling.original_max_position_embeddings);
    CHECK(close(a.rope_scaling.beta_fast, b.rope_scaling.beta_fast));
    CHECK(close(a.rope_scaling.beta_slow, b.rope_scaling.beta_slow));
    CHECK(close(a.rope_scaling.mscale, b.rope_scaling.mscale));
    CHECK(close(a.rope_scaling.mscale_all_dim, b.rope_scaling.mscale_all_dim));
  }
  for (int64_t l = 0; l < a.num_layers; ++l) {
    if (!a.is_moe_layer(l)) CHECK(a.intermediate_size == b.intermediate_size);
  }
  CHECK(a.moe_intermediate_size == b.moe_intermediate_size);
  CHECK(a.num_experts == b.num_experts);
  CHECK(a.num_experts_per_tok == b.num_experts_per_tok);
  CHECK(a.num_shared_experts == b.num_shared_experts);
  CHECK(a.shared_expert_intermediate_size == b.shared_expert_intermediate_size);
  CHECK(a.shared_expert_gate == b.shared_expert_gate);
  for (int64_t l = 0; l < std::max(a.num_layers, b.num_layers); ++l) CHECK(a.is_moe_layer(l) == b.is_moe_layer(l));
  CHECK(a.router == b.router);
  CHECK(a.norm_topk_prob == b.norm_topk_prob);
  CHECK(close(a.routed_scaling_factor, b.routed_scaling_factor));
  CHECK(a.n_group == b.n_group);
  CHECK(a.topk_group == b.topk_group);
  CHECK(a.kv_values_per_token_per_layer() == b.kv_values_per_token_per_layer());
}

}  // namespace tandem::test
