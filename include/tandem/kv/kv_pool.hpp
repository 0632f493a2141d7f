#pragma once
// Paged KV cache: a pool of fixed-size blocks with an explicit capacity, shared by sequences.
//
// Layout, in the pool's element type (KvType), as an attention kernel reads it:
//   storage[layer][block][plane][slot][row_width]
//   GQA:        two planes, K then V, each row kv_heads·head_dim wide (values_per_token / 2)
//   MLA latent: one plane, each row the normalised latent (kv_lora_rank) then the roped key
//               (qk_rope_head_dim)
// so one layer's K (or V) rows of one block are contiguous, and one layer's whole cache is one
// contiguous range of blocks.
//
// Blocks are addressed by id and reference-counted: a block may belong to several BlockTables (a
// shared prefix); it returns to the free list when its last reference is released. A table
// writes only into blocks it holds alone: make_writable() copies a shared block into a fresh one
// first (copy-on-write). Storage is allocated once, at construction.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "tandem/kv/kv_type.hpp"
#include "tandem/tensor/device.hpp"

namespace tandem {

enum class KvLayout { gqa, mla_latent };

struct KvPoolSpec {
  KvLayout layout = KvLayout::gqa;
  int64_t layers = 0;
  int64_t values_per_token = 0;  // per layer, over all planes (GQA: K + V)
  int64_t block_tokens = 16;
  int64_t blocks = 0;
  Device device = Device::cpu();
  KvType dtype = KvType::f16;
};

class KvPool {
 public:
  // Throws Error(invalid_argument) for non-positive sizes (or an odd GQA width), Error(out_of_memory)
  // when the pool cannot be allocated.
  explicit KvPool(const KvPoolSpec& spec);

  const KvPoolSpec& spec() const { return spec_; }
  KvType dtype() const { return spec_.dtype; }
  int64_t planes() const { return planes_; }
  int64_t row_width() const { return row_width_; }  // values per row of one plane
  size_t row_bytes() const { return row_bytes_; }
  uint64_t bytes() const { return bytes_; }
  int64_t free_blocks() const;

  // A block with one reference; Error(out_of_memory) when every block is in use.
  int32_t allocate_block();
  // One more reference to a block in use (Error(internal) for a free one).
  void retain_block(int32_t id);
  // Drops one reference; the block is free again when none are left.
  void release_block(int32_t id);
  int32_t ref_count(int32_t id) const;  // 0 for a free block
  // A fresh block (one reference) holding a copy of every layer's rows of `id`.
  int32_t copy_block(int32_t id);

  std::byte* row(int32_t block, int64_t layer, int64_t plane, int64_t slot) {
    return storage_.get() + offset(block, layer, plane, slot);
  }
  const std::byte* row(int32_t block, int64_t layer, int64_t plane, int64_t slot) const {
    return storage_.get() + offset(block, layer, plane, slot);
  }
  // Converts `row_width()` floats into the pool's type.
  void write_row(int32_t block, int64_t layer, int64_t plane, int64_t slot, const float* values) {
    kv_encode_row(spec_.dtype, values, row(block, layer, plane, slot), row_width_);
  }
  void read_row(int32_t block, int64_t layer, int64_t plane, int64_t slot, float* values) const {
    kv_decode_row(spec_.dtype, row(block, layer, plane, slot), values, row_width_);
  }

 private:
  size_t offset(int32_t block, int64_t layer, int64_t plane, int64_t slot) const {
    return static_cast<size_t>(((layer * spec_.blocks + block) * planes_ + plane) * spec_.block_tokens +
                               slot) *
           row_bytes_;
  }
  void check_in_use(int32_t id, const char* what) const;  // mutex_ held

  KvPoolSpec spec_;
  int64_t planes_ = 1, row_width_ = 0;
  size_t row_bytes_ = 0;
  uint64_t bytes_ = 0;
  std::unique_ptr<std::byte[]> storage_;
  mutable std::mutex mutex_;
  std::vector<int32_t> free_ids_;
  std::vector<int32_t> refs_;
};

// The blocks of one sequence, in position order. Not thread-safe; the pool is.
class BlockTable {
 public:
  BlockTable() = default;
  BlockTable(const BlockTable&) = delete;
  BlockTable& operator=(const BlockTable&) = delete;
  BlockTable(BlockTable&&) noexcept = default;
  BlockTable& operator=(BlockTable&&) noexcept = default;

  // Makes room for `tokens` positions, taking blocks from the pool; on Error(out_of_memory) the
  // table keeps what it had.
  void reserve(KvPool& pool, int64_t tokens);
  void release(KvPool& pool);  // drops every block reference
  // Keeps the blocks holding positions [0, tokens) and releases the rest.
  void truncate(KvPool& pool, int64_t tokens);
  // A new table sharing this one's blocks for positions [0, tokens) (each gains a reference).
  // Error(out_of_range) when this table holds fewer positions.
  BlockTable share_prefix(KvPool& pool, int64_t tokens) const;
  // Copies every shared block that holds a position in [begin, end) into a fresh block of its
  // own (copy-on-write), so writes there touch no other table. On Error(out_of_memory) the
  // blocks already copied stay copied (the table is still valid).
  void make_writable(KvPool& pool, int64_t begin, int64_t end);

  int64_t capacity_tokens(const KvPool& pool) const {
    return static_cast<int64_t>(blocks_.size()) * pool.spec().block_tokens;
  }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  int32_t block_of(const KvPool& pool, int64_t position) const {
    return blocks_[static_cast<size_t>(position / pool.spec().block_tokens)];
  }

  const std::byte* row(const KvPool& pool, int64_t layer, int64_t plane, int64_t position) const {
    return pool.row(block_of(pool, position), layer, plane, position % pool.spec().block_tokens);
  }
  // Writes one position's row; the block must be this table's alone (see make_writable).
  void write_row(KvPool& pool, int64_t layer, int64_t plane, int64_t position, const float* values) const {
    pool.write_row(block_of(pool, position), layer, plane, position % pool.spec().block_tokens, values);
  }

 private:
  std::vector<int32_t> blocks_;
};

}  // namespace tandem
