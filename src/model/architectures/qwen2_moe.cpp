// Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): biases on q/k/v, one shared expert of its own width
// behind a sigmoid gate, softmax top-k routing without renormalisation by default.
#include "model/architecture.hpp"
#include "model/config_keys.hpp"

namespace tandem::model {
namespace {

void read_hf(const HfKeys& keys, ModelConfig& c) {
  c.qkv_bias = keys.get_bool("qkv_bias").value_or(true);
  c.shared_expert_intermediate_size = keys.get_int("shared_expert_intermediate_size").value_or(0);
  c.shared_expert_gate = c.shared_expert_intermediate_size > 0;
  c.moe_layer_freq = keys.get_int("decoder_sparse_step").value_or(1);
  c.mlp_only_layers = keys.get_int_list("mlp_only_layers");
  c.rope_layout = RopeLayout::neox;
  c.router = RouterKind::softmax_topk;
}

void read_gguf(const GgufKeys& keys, ModelConfig& c, std::vector<std::string>&) {
  c.qkv_bias = keys.has_tensor("blk.0.attn_q.bias");
  c.shared_expert_intermediate_size = keys.get_int("expert_shared_feed_forward_length").value_or(0);
  c.shared_expert_gate = c.shared_expert_intermediate_size > 0;
  c.norm_topk_prob = keys.get_bool("expert_weights_norm").value_or(false);
  c.rope_layout = RopeLayout::neox;
  c.router = RouterKind::softmax_topk;
  c.mlp_only_layers = keys.layers_without("ffn_gate_inp.weight", c.num_layers);
}

}  // namespace

ArchitectureDescription describe_qwen2_moe() {
  using R = TensorRole;
  ArchitectureDescription d{Architecture::qwen2_moe, "qwen2_moe", "qwen2moe", read_hf, read_gguf, nullptr,
                            common_hub_names(), common_gguf_names()};
  d.hub_names.set(R::shared_gate, "model.layers.{L}.mlp.shared_expert.gate_proj.weight")
      .set(R::shared_up, "model.layers.{L}.mlp.shared_expert.up_proj.weight")
      .set(R::shared_down, "model.layers.{L}.mlp.shared_expert.down_proj.weight")
      .set(R::shared_expert_gate, "model.layers.{L}.mlp.shared_expert_gate.weight");
  d.gguf_names.set(R::shared_expert_gate, "blk.{L}.ffn_gate_inp_shexp.weight");
  return d;
}

}  // namespace tandem::model
