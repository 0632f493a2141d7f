// Qwen3-MoE: GQA with per-head RMSNorm on q and k, softmax top-k routing, no shared expert.
#include "model/architecture.hpp"
#include "model/config_keys.hpp"

namespace tandem::model {
namespace {

void read_hf(const HfKeys& keys, ModelConfig& c) {
  c.qk_norm = true;
  c.qkv_bias = keys.get_bool("attention_bias").value_or(false);
  c.moe_layer_freq = keys.get_int("decoder_sparse_step").value_or(1);
  c.mlp_only_layers = keys.get_int_list("mlp_only_layers");
  c.rope_layout = RopeLayout::neox;
  c.router = RouterKind::softmax_topk;
}

void read_gguf(const GgufKeys& keys, ModelConfig& c, std::vector<std::string>&) {
  c.qk_norm = true;
  c.qkv_bias = keys.has_tensor("blk.0.attn_q.bias");
  c.norm_topk_prob = keys.get_bool("expert_weights_norm").value_or(true);  // llama.cpp always normalises
  c.rope_layout = RopeLayout::neox;
  c.router = RouterKind::softmax_topk;
  c.mlp_only_layers = keys.layers_without("ffn_gate_inp.weight", c.num_layers);
}

}  // namespace

ArchitectureDescription describe_qwen3_moe() {
  using R = TensorRole;
  ArchitectureDescription d{Architecture::qwen3_moe, "qwen3_moe", "qwen3moe", read_hf, read_gguf, nullptr,
                            common_hub_names(), common_gguf_names()};
  d.hub_names.set(R::q_norm, "model.layers.{L}.self_attn.q_norm.weight")
      .set(R::k_norm, "model.layers.{L}.self_attn.k_norm.weight");
  d.gguf_names.set(R::q_norm, "blk.{L}.attn_q_norm.weight").set(R::k_norm, "blk.{L}.attn_k_norm.weight");
  return d;
}

}  // namespace tandem::model
