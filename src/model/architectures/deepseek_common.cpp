#include "model/architectures/deepseek_common.hpp"

#include <cmath>

#include "model/config_keys.hpp"
#include "tandem/error.hpp"

namespace tandem::model {

void read_deepseek_hf(const HfKeys& keys, ModelConfig& c, const char* default_topk_method) {
  c.attention = AttentionKind::mla;
  c.q_lora_rank = keys.get_int("q_lora_rank").value_or(0);
  c.kv_lora_rank = keys.require_int("kv_lora_rank");
  c.qk_nope_head_dim = keys.require_int("qk_nope_head_dim");
  c.qk_rope_head_dim = keys.require_int("qk_rope_head_dim");
  c.v_head_dim = keys.require_int("v_head_dim");
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;  // transformers 5's "head_dim" is the rope part
  c.num_kv_heads = c.num_heads;
  c.rope_layout = keys.get_bool("rope_interleave").value_or(true) ? RopeLayout::interleaved : RopeLayout::neox;
  c.first_k_dense = keys.get_int("first_k_dense_replace").value_or(0);
  c.moe_layer_freq = keys.get_int("moe_layer_freq").value_or(1);
  c.num_nextn_predict_layers = keys.get_int("num_nextn_predict_layers").value_or(0);
  c.num_shared_experts = keys.get_int("n_shared_experts").value_or(0);
  c.routed_scaling_factor = keys.get_float("routed_scaling_factor").value_or(1.0);
  c.n_group = keys.get_int("n_group").value_or(1);
  c.topk_group = keys.get_int("topk_group").value_or(1);
  const std::string method = keys.get_string("topk_method").value_or(default_topk_method);
  if (method == "greedy") {
    c.router = RouterKind::softmax_topk;
  } else if (method == "group_limited_greedy") {
    c.router = RouterKind::softmax_group_topk;
  } else if (method == "noaux_tc") {
    c.router = RouterKind::sigmoid_noaux_tc;
  } else {
    throw Error(ErrorKind::unsupported, keys.source() + ": topk_method \"" + method +
                                            "\" is not supported (greedy, group_limited_greedy, noaux_tc)");
  }
  const std::string scoring = keys.get_string("scoring_func")
                                  .value_or(c.router == RouterKind::sigmoid_noaux_tc ? "sigmoid" : "softmax");
  if ((scoring == "sigmoid") != (c.router == RouterKind::sigmoid_noaux_tc))
    throw Error(ErrorKind::unsupported,
                keys.source() + ": scoring_func \"" + scoring + "\" with topk_method \"" + method + "\" is not supported");
}

void read_deepseek_gguf(const GgufKeys& keys, ModelConfig& c, std::vector<std::string>& warnings) {
  c.attention = AttentionKind::mla;
  c.q_lora_rank = keys.get_int("attention.q_lora_rank").value_or(0);
  c.kv_lora_rank = keys.require_int("attention.kv_lora_rank");
  c.qk_rope_head_dim = keys.require_int("rope.dimension_count");
  // Newer converters store the absorbed (MQA) sizes in key_length and the MLA ones in *_mla.
  const int64_t key_length = keys.get_int("attention.key_length_mla").value_or(keys.require_int("attention.key_length"));
  c.v_head_dim = keys.get_int("attention.value_length_mla").value_or(keys.require_int("attention.value_length"));
  c.qk_nope_head_dim = key_length - c.qk_rope_head_dim;
  c.head_dim = key_length;
  c.num_kv_heads = c.num_heads;
  c.rope_layout = RopeLayout::interleaved;
  c.first_k_dense = keys.get_int("leading_dense_block_count").value_or(0);
  c.num_shared_experts = keys.get_int("expert_shared_count").value_or(0);
  c.routed_scaling_factor = keys.get_float("expert_weights_scale").value_or(1.0);
  c.norm_topk_prob = keys.get_bool("expert_weights_norm").value_or(false);
  if (auto log_multiplier = keys.get_float("rope.scaling.yarn_log_multiplier")) {
    // GGUF stores 0.1·mscale_all_dim; llama.cpp assumes mscale == mscale_all_dim (as DeepSeek ships).
    c.rope_scaling.mscale_all_dim = *log_multiplier / 0.1;
    c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim;
  }
  const int64_t gating = keys.get_int("expert_gating_func").value_or(1);
  if (gating != 1 && gating != 2)
    throw Error(ErrorKind::unsupported, keys.source() + ": " + keys.prefix() + "expert_gating_func " +
                                            std::to_string(gating) + " is not supported (1 softmax, 2 sigmoid)");
  const auto groups = keys.get_int("expert_group_count");
  const auto groups_used = keys.get_int("expert_group_used_count");
  c.n_group = groups.value_or(1);
  c.topk_group = groups_used.value_or(1);
  if (gating == 2) {
    c.router = RouterKind::sigmoid_noaux_tc;
    if (!groups || !groups_used)
      warnings.push_back(keys.prefix() + "expert_group_count / expert_group_used_count are missing: routing is not "
                                         "group-limited (DeepSeek-V3 uses 8 groups, 4 used); override with "
                                         "n_group / topk_group if this model needs them");
  } else {
    c.router = c.n_group > 1 ? RouterKind::softmax_group_topk : RouterKind::softmax_topk;
  }
}

void add_deepseek_names(ArchitectureDescription& d) {
  using R = TensorRole;
  d.hub_names.set(R::q_a, "model.layers.{L}.self_attn.q_a_proj.weight")
      .set(R::q_a_norm, "model.layers.{L}.self_attn.q_a_layernorm.weight")
      .set(R::q_b, "model.layers.{L}.self_attn.q_b_proj.weight")
      .set(R::kv_a, "model.layers.{L}.self_attn.kv_a_proj_with_mqa.weight")
      .set(R::kv_a_norm, "model.layers.{L}.self_attn.kv_a_layernorm.weight")
      .set(R::kv_b, "model.layers.{L}.self_attn.kv_b_proj.weight")
      .set(R::shared_gate, "model.layers.{L}.mlp.shared_experts.gate_proj.weight")
      .set(R::shared_up, "model.layers.{L}.mlp.shared_experts.up_proj.weight")
      .set(R::shared_down, "model.layers.{L}.mlp.shared_experts.down_proj.weight")
      .set(R::router_bias, "model.layers.{L}.mlp.gate.e_score_correction_bias");
  d.gguf_names.set(R::q_a, "blk.{L}.attn_q_a.weight")
      .set(R::q_a_norm, "blk.{L}.attn_q_a_norm.weight")
      .set(R::q_b, "blk.{L}.attn_q_b.weight")
      .set(R::kv_a, "blk.{L}.attn_kv_a_mqa.weight")
      .set(R::kv_a_norm, "blk.{L}.attn_kv_a_norm.weight")
      .set(R::kv_b, "blk.{L}.attn_kv_b.weight")
      .set(R::router_bias, "blk.{L}.exp_probs_b.bias");
}

}  // namespace tandem::model
