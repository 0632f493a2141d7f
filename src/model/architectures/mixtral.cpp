// Mixtral: llama attention, every layer MoE, softmax top-k renormalised over the chosen experts.
// The expert width is config.json's intermediate_size; GGUF stores it as llama.feed_forward_length.
#include "model/architecture.hpp"
#include "model/config_keys.hpp"

namespace tandem::model {
namespace {

void read_hf(const HfKeys&, ModelConfig& c) {
  c.moe_intermediate_size = c.intermediate_size;
  c.norm_topk_prob = true;
  c.rope_layout = RopeLayout::neox;
  c.router = RouterKind::softmax_topk;
}

void read_gguf(const GgufKeys& keys, ModelConfig& c, std::vector<std::string>&) {
  c.moe_intermediate_size = keys.get_int("expert_feed_forward_length").value_or(c.intermediate_size);
  c.intermediate_size = c.moe_intermediate_size;
  c.norm_topk_prob = true;
  // The converter permutes q/k rows for GGML's adjacent-pair rope.
  c.rope_layout = RopeLayout::interleaved;
  c.router = RouterKind::softmax_topk;
}

bool accepts_gguf(const GgufKeys& keys) { return keys.get_int("expert_count").value_or(0) > 0; }

}  // namespace

ArchitectureDescription describe_mixtral() {
  using R = TensorRole;
  ArchitectureDescription d{Architecture::mixtral, "mixtral", "llama", read_hf, read_gguf, accepts_gguf,
                            common_hub_names(), common_gguf_names()};
  d.hub_names.set(R::router, "model.layers.{L}.block_sparse_moe.gate.weight")
      .set(R::expert_gate, "model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight")
      .set(R::expert_down, "model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight")
      .set(R::expert_up, "model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight");
  return d;
}

}  // namespace tandem::model
