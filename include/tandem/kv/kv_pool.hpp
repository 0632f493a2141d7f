#pragma once
// Paged KV cache: a pool of fixed-size blocks with an explicit capacity, shared by sequences.
// A block holds, for every layer, `block_tokens` token slots of `values_per_token` floats:
//   GQA:        K (kv_heads·head_dim) then V (kv_heads·head_dim)
//   MLA latent: the normalised latent (kv_lora_rank) then the roped key (qk_rope_head_dim)
// Blocks are addressed by id, so a later tier can move them between pools without the model
// knowing. Storage is allocated once, at construction.
#include <cstdint>
#include <mutex>
#include <vector>

#include "tandem/tensor/device.hpp"

namespace tandem {

enum class KvLayout { gqa, mla_latent };

struct KvPoolSpec {
  KvLayout layout = KvLayout::gqa;
  int64_t layers = 0;
  int64_t values_per_token = 0;  // per layer
  int64_t block_tokens = 16;
  int64_t blocks = 0;
  Device device = Device::cpu();
};

class KvPool {
 public:
  // Throws Error(invalid_argument) for non-positive sizes, Error(out_of_memory) when the pool
  // cannot be allocated.
  explicit KvPool(const KvPoolSpec& spec);

  const KvPoolSpec& spec() const { return spec_; }
  uint64_t bytes() const { return storage_.size() * sizeof(float); }
  int64_t free_blocks() const;

  int32_t allocate_block();  // Error(out_of_memory) when every block is in use
  void free_block(int32_t id);

  float* token_values(int32_t block, int64_t layer, int64_t slot) {
    return storage_.data() + offset(block, layer, slot);
  }
  const float* token_values(int32_t block, int64_t layer, int64_t slot) const {
    return storage_.data() + offset(block, layer, slot);
  }

 private:
  size_t offset(int32_t block, int64_t layer, int64_t slot) const {
    return static_cast<size_t>(
        ((static_cast<int64_t>(block) * spec_.layers + layer) * spec_.block_tokens + slot) *
        spec_.values_per_token);
  }

  KvPoolSpec spec_;
  std::vector<float> storage_;
  mutable std::mutex mutex_;
  std::vector<int32_t> free_ids_;
  std::vector<uint8_t> in_use_;
};

// The blocks of one sequence, in position order.
class BlockTable {
 public:
  // Makes room for `tokens` positions, taking blocks from the pool; on Error(out_of_memory) the
  // table keeps what it had.
  void reserve(KvPool& pool, int64_t tokens);
  void release(KvPool& pool);  // returns every block
  int64_t capacity_tokens(const KvPool& pool) const {
    return static_cast<int64_t>(blocks_.size()) * pool.spec().block_tokens;
  }
  const std::vector<int32_t>& blocks() const { return blocks_; }

  float* token_values(KvPool& pool, int64_t layer, int64_t position) const {
    const int64_t bt = pool.spec().block_tokens;
    return pool.token_values(blocks_[static_cast<size_t>(position / bt)], layer, position % bt);
  }
  const float* token_values(const KvPool& pool, int64_t layer, int64_t position) const {
    const int64_t bt = pool.spec().block_tokens;
    return pool.token_values(blocks_[static_cast<size_t>(position / bt)], layer, position % bt);
  }

 private:
  std::vector<int32_t> blocks_;
};

}  // namespace tandem
