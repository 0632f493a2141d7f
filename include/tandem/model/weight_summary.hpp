#pragma once
// Counts over bound weights: parameters, bytes by stored type, and the split this project is
// about — routed experts (host DRAM, CPU) versus everything else (GPU). Counted over what
// bind_weights bound, so tensors a file carries twice (GGUF's attn_k_b/attn_v_b beside attn_kv_b)
// or shares (tied embeddings) count once.
#include <cstdint>
#include <map>
#include <string>

#include "tandem/model/weights.hpp"

namespace tandem {

struct WeightSummary {
  // Learned parameters as HF counts them: excludes FP8 block scales and DeepSeek-V3's
  // e_score_correction_bias (a buffer, not a parameter).
  int64_t parameters = 0;
  int64_t routed_expert_parameters = 0;
  uint64_t routed_expert_bytes = 0;  // host DRAM in the hybrid engine
  uint64_t other_bytes = 0;          // GPU: attention, norms, router, shared experts, dense FFN, embeddings
  std::map<std::string, uint64_t> bytes_by_type;  // "f32", "q8_0", ...
  uint64_t total_bytes() const { return routed_expert_bytes + other_bytes; }
};

WeightSummary summarize_weights(const Weights& weights);

}  // namespace tandem
