#pragma once
// An architecture is a description, not a forward pass: which config keys it adds to the common
// ones, and which tensor names (hub and GGUF) fill which weight roles. Adding a model family is
// one small file in architectures/ plus a line in architecture_registry.cpp.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/model/model_config.hpp"

namespace tandem::model {

class HfKeys;
class GgufKeys;

enum class TensorRole : uint8_t {
  token_embedding, output_norm, output,
  attn_norm, ffn_norm,
  q, k, v, o, q_norm, k_norm,
  q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b,
  ffn_gate, ffn_up, ffn_down,
  router, router_bias,
  expert_gate, expert_up, expert_down,  // hub: one tensor per expert; GGUF: merged [E, out, in]
  shared_gate, shared_up, shared_down, shared_expert_gate,
  count
};
inline constexpr size_t kTensorRoleCount = static_cast<size_t>(TensorRole::count);

// Full tensor names with "{L}" for the layer and "{E}" for the expert. A linear weight's bias is
// its name with ".weight" replaced by ".bias"; FP8's block scales are "<name>_scale_inv".
class TensorNames {
 public:
  TensorNames& set(TensorRole role, std::string pattern) {
    patterns_[static_cast<size_t>(role)] = std::move(pattern);
    return *this;
  }
  const std::string& pattern(TensorRole role) const { return patterns_[static_cast<size_t>(role)]; }
  // The name for one layer (and expert); empty when the architecture has no such tensor.
  std::string name(TensorRole role, int64_t layer = -1, int64_t expert = -1) const;

 private:
  std::array<std::string, kTensorRoleCount> patterns_;
};

struct ArchitectureDescription {
  Architecture id;
  std::string_view hf_model_type;  // config.json model_type
  std::string_view gguf_name;      // general.architecture
  // Architecture-specific keys, read after the common ones (hf_config.cpp, gguf_config.cpp).
  void (*read_hf)(const HfKeys& keys, ModelConfig& config);
  void (*read_gguf)(const GgufKeys& keys, ModelConfig& config, std::vector<std::string>& warnings);
  // Several architectures may share a GGUF name (deepseek2 is V2 and V3, llama is Mixtral):
  // the first whose test accepts the file wins; null accepts every file.
  bool (*accepts_gguf)(const GgufKeys& keys);
  TensorNames hub_names;
  TensorNames gguf_names;
};

const std::vector<ArchitectureDescription>& architecture_registry();
const ArchitectureDescription& describe(Architecture id);
const ArchitectureDescription* find_by_model_type(std::string_view model_type);

// Name tables every family starts from (llama-style layout).
TensorNames common_hub_names();
TensorNames common_gguf_names();

// One function per file in architectures/.
ArchitectureDescription describe_qwen3_moe();
ArchitectureDescription describe_qwen2_moe();
ArchitectureDescription describe_mixtral();
ArchitectureDescription describe_deepseek_v2();
ArchitectureDescription describe_deepseek_v3();

}  // namespace tandem::model
