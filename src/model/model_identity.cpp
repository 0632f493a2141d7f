#include "tandem/model/model_identity.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <string_view>
#include <vector>

namespace tandem {

uint64_t model_identity(const ModelFiles& files) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  const auto bytes = [&](const void* data, size_t n) { XXH3_64bits_update(&state, data, n); };
  const auto text = [&](std::string_view s) {
    const uint64_t n = s.size();
    bytes(&n, sizeof n);
    bytes(s.data(), s.size());
  };
  const auto number = [&](auto v) { bytes(&v, sizeof v); };

  const ModelConfig& c = files.config;
  text(c.architecture_name);
  for (const int64_t v : {c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
                          c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                          c.intermediate_size, c.moe_intermediate_size, c.num_experts, c.num_experts_per_tok,
                          c.num_shared_experts, c.shared_expert_intermediate_size, c.first_k_dense,
                          c.moe_layer_freq, c.n_group, c.topk_group, c.rope_scaling.original_max_position_embeddings})
    number(v);
  for (const double v : {c.rms_norm_eps, c.rope_theta, c.routed_scaling_factor, c.rope_scaling.factor,
                         c.rope_scaling.beta_fast, c.rope_scaling.beta_slow, c.rope_scaling.mscale,
                         c.rope_scaling.mscale_all_dim})
    number(v);
  for (const int v : {static_cast<int>(c.architecture), static_cast<int>(c.attention), static_cast<int>(c.rope_layout),
                      static_cast<int>(c.rope_scaling.type), static_cast<int>(c.router), int{c.qk_norm},
                      int{c.qkv_bias}, int{c.norm_topk_prob}, int{c.shared_expert_gate}, int{c.tie_word_embeddings}})
    number(v);
  for (const int64_t layer : c.mlp_only_layers) number(layer);

  std::vector<const TensorEntry*> tensors;
  for (const TensorEntry& e : files.tensors().entries()) tensors.push_back(&e);
  std::sort(tensors.begin(), tensors.end(), [](const auto* a, const auto* b) { return a->name < b->name; });
  for (const TensorEntry* e : tensors) {
    text(e->name);
    number(static_cast<int>(e->view.dtype));
    for (int d = 0; d < e->view.shape.rank; ++d) number(e->view.shape[d]);
    number(e->view.nbytes);
  }
  constexpr size_t kSamples = 64, kSampleBytes = 4096;
  const size_t stride = std::max<size_t>(1, tensors.size() / kSamples);
  for (size_t i = 0; i < tensors.size(); i += stride) {
    const TensorView& v = tensors[i]->view;
    if (v.data != nullptr && v.device.kind == DeviceKind::cpu)
      bytes(v.data, static_cast<size_t>(std::min<uint64_t>(v.nbytes, kSampleBytes)));
  }
  return XXH3_64bits_digest(&state);
}

}  // namespace tandem
