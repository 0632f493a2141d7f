#include "tandem/model/model_config.hpp"

#include <algorithm>

#include "model/architecture.hpp"

namespace tandem {

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (layer < 0 || layer >= num_layers || num_experts <= 0) return false;
  const int64_t freq = std::max<int64_t>(moe_layer_freq, 1);
  if (architecture == Architecture::deepseek_v2 || architecture == Architecture::deepseek_v3) {
    // DeepSeek: layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0
    return layer >= first_k_dense && layer % freq == 0;
  }
  // Qwen: (layer_idx + 1) % decoder_sparse_step == 0, unless listed in mlp_only_layers
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % freq == 0;
}

int64_t ModelConfig::kv_values_per_token_per_layer() const {
  if (attention == AttentionKind::mla) return kv_lora_rank + qk_rope_head_dim;
  return 2 * num_kv_heads * head_dim;
}

std::string supported_architectures() {
  std::string list;
  for (const auto& arch : model::architecture_registry()) {
    if (!list.empty()) list += ", ";
    list += arch.hf_model_type;
  }
  return list;
}

}  // namespace tandem
