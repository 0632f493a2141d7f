#pragma once
// What DeepSeek-V2 and V3 share: multi-head latent attention (MLA) with interleaved rope, dense
// first layers, shared experts as one wide expert. Each version's file adds its router.
#include "model/architecture.hpp"

namespace tandem::model {

void read_deepseek_hf(const HfKeys& keys, ModelConfig& c, const char* default_topk_method);
void read_deepseek_gguf(const GgufKeys& keys, ModelConfig& c, std::vector<std::string>& warnings);
void add_deepseek_names(ArchitectureDescription& d);

}  // namespace tandem::model
