#pragma once
// Running a prompt through a ForwardPass in the engine tests: a small float32 KV pool for the tiny
// models, and every position's logits of one chunk.
#include <cstdint>
#include <span>
#include <vector>

#include "tandem/engine/forward.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_config.hpp"

namespace tandem::test {

// 8 blocks of 4 tokens, float32 rows, in host memory.
inline KvPoolSpec small_f32_pool(const ModelConfig& c) {
  return {c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa, c.num_layers,
          c.kv_values_per_token_per_layer(), 4, 8, Device::cpu(), KvType::f32};
}

// Logits [ids.size(), vocab] of `ids` run as one chunk from position 0 through `forward`, whose
// pool is `kv` (the blocks are released afterwards).
inline std::vector<float> prompt_logits(ForwardPass& forward, KvPool& kv, std::span<const int32_t> ids,
                                        int64_t vocab) {
  BlockTable table;
  table.reserve(kv, static_cast<int64_t>(ids.size()));
  std::vector<float> logits(ids.size() * static_cast<size_t>(vocab));
  const SequenceChunk chunk{ids, 0, &table, true};
  forward.run({&chunk, 1}, logits.data());
  table.release(kv);
  return logits;
}

}  // namespace tandem::test
