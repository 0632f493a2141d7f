#include <string>

#include "model/architecture.hpp"
#include "tandem/error.hpp"

namespace tandem::model {

std::string TensorNames::name(TensorRole role, int64_t layer, int64_t expert) const {
  std::string out = pattern(role);
  for (auto [key, value] : {std::pair{"{L}", layer}, std::pair{"{E}", expert}}) {
    const auto at = out.find(key);
    if (at != std::string::npos) out.replace(at, 3, std::to_string(value));
  }
  return out;
}

TensorNames common_hub_names() {
  using R = TensorRole;
  TensorNames n;
  n.set(R::token_embedding, "model.embed_tokens.weight")
      .set(R::output_norm, "model.norm.weight")
      .set(R::output, "lm_head.weight")
      .set(R::attn_norm, "model.layers.{L}.input_layernorm.weight")
      .set(R::ffn_norm, "model.layers.{L}.post_attention_layernorm.weight")
      .set(R::q, "model.layers.{L}.self_attn.q_proj.weight")
      .set(R::k, "model.layers.{L}.self_attn.k_proj.weight")
      .set(R::v, "model.layers.{L}.self_attn.v_proj.weight")
      .set(R::o, "model.layers.{L}.self_attn.o_proj.weight")
      .set(R::ffn_gate, "model.layers.{L}.mlp.gate_proj.weight")
      .set(R::ffn_up, "model.layers.{L}.mlp.up_proj.weight")
      .set(R::ffn_down, "model.layers.{L}.mlp.down_proj.weight")
      .set(R::router, "model.layers.{L}.mlp.gate.weight")
      .set(R::expert_gate, "model.layers.{L}.mlp.experts.{E}.gate_proj.weight")
      .set(R::expert_up, "model.layers.{L}.mlp.experts.{E}.up_proj.weight")
      .set(R::expert_down, "model.layers.{L}.mlp.experts.{E}.down_proj.weight");
  return n;
}

TensorNames common_gguf_names() {
  using R = TensorRole;
  TensorNames n;
  n.set(R::token_embedding, "token_embd.weight")
      .set(R::output_norm, "output_norm.weight")
      .set(R::output, "output.weight")
      .set(R::attn_norm, "blk.{L}.attn_norm.weight")
      .set(R::ffn_norm, "blk.{L}.ffn_norm.weight")
      .set(R::q, "blk.{L}.attn_q.weight")
      .set(R::k, "blk.{L}.attn_k.weight")
      .set(R::v, "blk.{L}.attn_v.weight")
      .set(R::o, "blk.{L}.attn_output.weight")
      .set(R::ffn_gate, "blk.{L}.ffn_gate.weight")
      .set(R::ffn_up, "blk.{L}.ffn_up.weight")
      .set(R::ffn_down, "blk.{L}.ffn_down.weight")
      .set(R::router, "blk.{L}.ffn_gate_inp.weight")
      .set(R::expert_gate, "blk.{L}.ffn_gate_exps.weight")
      .set(R::expert_up, "blk.{L}.ffn_up_exps.weight")
      .set(R::expert_down, "blk.{L}.ffn_down_exps.weight")
      .set(R::shared_gate, "blk.{L}.ffn_gate_shexp.weight")
      .set(R::shared_up, "blk.{L}.ffn_up_shexp.weight")
      .set(R::shared_down, "blk.{L}.ffn_down_shexp.weight");
  return n;
}

const std::vector<ArchitectureDescription>& architecture_registry() {
  static const std::vector<ArchitectureDescription> registry = {
      describe_qwen3_moe(), describe_qwen2_moe(), describe_mixtral(), describe_deepseek_v2(), describe_deepseek_v3(),
  };
  return registry;
}

const ArchitectureDescription& describe(Architecture id) {
  for (const auto& arch : architecture_registry())
    if (arch.id == id) return arch;
  throw Error(ErrorKind::internal, "no description for architecture " + std::to_string(static_cast<int>(id)));
}

const ArchitectureDescription* find_by_model_type(std::string_view model_type) {
  for (const auto& arch : architecture_registry())
    if (arch.hf_model_type == model_type) return &arch;
  return nullptr;
}

}  // namespace tandem::model
