#pragma once
// Paged KV cache: a pool of fixed-size blocks with an explicit capacity, shared by sequences.
//
// Layout, as an attention kernel reads it:
//   storage[layer][block][plane] — one layer's planes of one block are contiguous, and one layer's
//   whole cache is one contiguous range of blocks.
//   GQA:        two planes, K then V, each row kv_heads·head_dim wide (values_per_token / 2)
//   MLA latent: one plane, each row the normalised latent (kv_lora_rank) then the roped key
//               (qk_rope_head_dim)
// A plane is either per-token — block_tokens rows of kv_row_bytes(dtype, row_width) each, slot
// after slot (f32/f16/bf16 values; fp8/int8/int4 codes followed by their group scales, see
// kv_quant.hpp) — or, for the K plane of an int4 GQA cache, per-channel (KIVI): the block's
// block_tokens rows of 4-bit codes, slot-major, then one (f16 scale, f16 min) pair per channel
// computed over the block's tokens (kv_channel_block_bytes). A per-channel block can only be
// quantised once all its tokens are known, so each sequence holds an *open-rows slot* of the pool:
// per layer, the index (in the sequence's block list) of its open (last, partial) block and that
// block's key rows in float32 — KIVI's full-precision residual; the block is quantised ("sealed")
// when its last slot is written.
//
// Kernels address a sequence by plain data only: its block ids in position order (a row of a flat
// int32 table) and its open-rows slot (write_position, values_at); BlockTable is the owner's view
// of the same two things. The MLA latent is both key and value and is always
// quantised per token.
//
// Blocks are addressed by id and reference-counted: a block may belong to several BlockTables (a
// shared prefix); it returns to the free list when its last reference is released. A table
// writes only into blocks it holds alone: make_writable() copies a shared block into a fresh one
// first (copy-on-write). Storage is allocated once, at construction.
#include <cstddef>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
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
  // MLA: the roped key's width at the end of each row. With a quantised dtype those values stay
  // f16 (the position-carrying part is the one quantisation hurts: on the trained DeepSeek-V3,
  // fp8 on the rope part alone costs +0.96 % perplexity, on the latent alone +0.13 %), as
  // DeepSeek's own FP8 MLA cache keeps its rope part in bf16.
  int64_t rope_values = 0;
  // [layers], or empty (all false): true for a layer whose attention runs on a device backend,
  // which keeps that layer's rows in its own memory (Backend::kv_attach). The pool holds no host
  // planes for such a layer (block ids and references still cover it).
  std::vector<bool> device_layers;
};

// What KvPool::import_blocks may assume of the host copies it reads. `reused`: the caller may change
// or free them once it returns, so the device layers' copies are complete by then. `kept`: they stay
// unchanged until the pool's next export_block or settle_imports (the host tier's pinned slots), so
// a GPU may leave its copies in flight behind the work it has queued and issue each layer's copies
// just ahead of that layer's first use: a prefix's blocks arrive while its suffix's first layers run.
enum class HostCopies { reused, kept };

class KvPool {
 public:
  // Throws Error(invalid_argument) for non-positive sizes (or an odd GQA width), Error(out_of_memory)
  // when the pool cannot be allocated.
  explicit KvPool(const KvPoolSpec& spec);

  const KvPoolSpec& spec() const { return spec_; }
  KvType dtype() const { return spec_.dtype; }
  int64_t planes() const { return planes_; }
  int64_t row_width() const { return row_width_; }  // values per row of one plane
  size_t row_bytes() const { return row_bytes_; }   // one row of a per-token plane
  uint64_t bytes() const { return bytes_; }         // the host planes
  // Whether the pool holds host planes for `layer` (not a device_layers one).
  bool on_host(int64_t layer) const { return host_index_[static_cast<size_t>(layer)] >= 0; }
  // One block's planes in one layer (contiguous at plane_data(block, layer, 0)).
  size_t block_layer_bytes() const { return block_layer_bytes_; }
  // Bytes one token takes over all layers and planes, scales included.
  double bytes_per_token() const {
    return static_cast<double>(block_layer_bytes_ * static_cast<size_t>(spec_.layers)) /
           static_cast<double>(spec_.block_tokens);
  }
  // True for the K plane of an int4 GQA pool (quantised per channel over a block).
  bool per_channel_plane(int64_t plane) const { return plane == 0 && channel_keys_; }
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
  // Told (from, to) after copy_block copied a block: a backend that holds layers of this pool in
  // its own memory (a GPU) copies its planes along. Held weakly: a listener that is gone is skipped.
  using BlockCopyListener = std::function<void(int32_t from, int32_t to)>;
  void add_block_copy_listener(std::weak_ptr<BlockCopyListener> listener);

  // ---- one block's bytes in host memory, whatever holds its layers (the prefix cache's tiers) ----
  // Serialised layout: every layer's planes of the block, layer after layer (block_bytes() in all,
  // block_layer_bytes() a layer) — the layout a pool without device layers stores, so a block
  // exported from a GPU's layers equals the one a CPU pool would hold.
  size_t block_bytes() const { return block_layer_bytes_ * static_cast<size_t>(spec_.layers); }
  bool has_device_layers() const { return host_layers_ < spec_.layers; }
  // Moves the planes of the device layers a backend holds to and from host memory. Registered by
  // that backend when it attaches a layer (Backend::kv_attach); held weakly: a transfer that is
  // gone is skipped, and a device layer no live transfer holds makes export/import Error(internal).
  class BlockTransfer {
   public:
    virtual ~BlockTransfer() = default;
    virtual bool holds_layer(int64_t layer) const = 0;
    // Copies `block`'s planes of each layer this transfer holds to `host` + layer · block_layer_bytes
    // (from it, for from_host), and returns once the copy is complete.
    virtual void to_host(int32_t block, std::byte* host) = 0;
    virtual void from_host(int32_t block, const std::byte* host) = 0;
    // from_host for several blocks (blocks[i] from hosts[i]): a transfer that can issue the copies
    // together (a GPU's one batch and one wait) overrides it. With HostCopies::reused it returns once
    // complete for all; with `kept` it may leave them in flight (see HostCopies), as long as every use
    // of a block's layer through it (its kernels, to_host, a block copy) sees the imported bytes.
    virtual void from_host_many(std::span<const int32_t> blocks, std::span<const std::byte* const> hosts,
                                HostCopies copies) {
      (void)copies;
      for (size_t i = 0; i < blocks.size() && i < hosts.size(); ++i) from_host(blocks[i], hosts[i]);
    }
    // Returns once no copy from host memory that from_host_many left in flight still reads it.
    virtual void settle() {}
  };
  void add_block_transfer(std::weak_ptr<BlockTransfer> transfer);
  // Copies block `block` (in use) out to `host` (block_bytes()) / in from it: host layers by
  // memcpy, device layers through their transfer.
  void export_block(int32_t block, std::byte* host) const;
  void import_block(int32_t block, const std::byte* host);
  // import_block of blocks[i] from hosts[i] for every i (equal sizes), the device layers' copies issued
  // together (a prefix run coming back from a tier: one wait, not one per block). With `kept` host
  // copies a GPU may return before its copies are done (see HostCopies).
  void import_blocks(std::span<const int32_t> blocks, std::span<const std::byte* const> hosts,
                     HostCopies copies = HostCopies::reused);
  // Waits for every device copy that import_blocks left reading `kept` host copies (before freeing them).
  void settle_imports();

  // One plane of one block (its whole per-token rows, or a per-channel block).
  std::byte* plane_data(int32_t block, int64_t layer, int64_t plane) {
    return storage_.get() + offset(block, layer, plane);
  }
  const std::byte* plane_data(int32_t block, int64_t layer, int64_t plane) const {
    return storage_.get() + offset(block, layer, plane);
  }
  // One row of a per-token plane.
  std::byte* row(int32_t block, int64_t layer, int64_t plane, int64_t slot) {
    return plane_data(block, layer, plane) + static_cast<size_t>(slot) * row_bytes_;
  }
  const std::byte* row(int32_t block, int64_t layer, int64_t plane, int64_t slot) const {
    return plane_data(block, layer, plane) + static_cast<size_t>(slot) * row_bytes_;
  }
  // Converts `row_width()` floats into the pool's type (a per-token plane; per-channel planes are
  // written whole by seal_block).
  void write_row(int32_t block, int64_t layer, int64_t plane, int64_t slot, const float* values);
  // Quantises `tokens` rows [tokens][row_width] into a per-channel plane of a block.
  void seal_block(int32_t block, int64_t layer, int64_t plane, const float* rows, int64_t tokens);
  // Values [first, first + n) of a stored row as float32: a pointer into the pool itself for f32,
  // else into `scratch` (n floats), where they are widened or dequantised.
  const float* values(int32_t block, int64_t layer, int64_t plane, int64_t slot, int64_t first, int64_t n,
                      float* scratch) const;
  void read_row(int32_t block, int64_t layer, int64_t plane, int64_t slot, float* out) const {
    const float* v = values(block, layer, plane, slot, 0, row_width_, out);
    if (v != out) std::copy_n(v, row_width_, out);
  }

  // ---- a sequence by plain data: `blocks` its block ids (blocks[position / block_tokens]),
  // `open` its open-rows slot (kNoOpenRows where the pool has no per-channel plane) ----
  static constexpr int32_t kNoOpenRows = -1;
  // Writes one position's row; its block must be the sequence's alone. A per-channel plane's row
  // goes to the open rows (a sealed block written again is reopened first); the block is sealed when
  // its last slot is written.
  void write_position(const int32_t* blocks, int32_t open, int64_t layer, int64_t plane, int64_t position,
                      const float* values);
  // Values [first, first + n) of one position's row as float32 (see values); rows of the open
  // per-channel block come from the open rows.
  const float* values_at(const int32_t* blocks, int32_t open, int64_t layer, int64_t plane, int64_t position,
                         int64_t first, int64_t n, float* scratch) const;

  // ---- open-rows slots (per-channel pools; owned by BlockTables) ----
  // A slot with every layer's open block at index 0; Error(unsupported) where the pool has no
  // per-channel plane. Storage: layers · block_tokens · row_width floats, kept for reuse when released.
  int32_t acquire_open_rows();
  void release_open_rows(int32_t open);
  int32_t copy_open_rows(int32_t open);  // a new slot holding the same open indices and rows
  int64_t& open_block(int32_t open, int64_t layer) { return open_rows_at(open).open_block[static_cast<size_t>(layer)]; }
  int64_t open_block(int32_t open, int64_t layer) const {
    return open_rows_at(open).open_block[static_cast<size_t>(layer)];
  }
  float* open_rows(int32_t open, int64_t layer) {
    return open_rows_at(open).rows.data() + layer * spec_.block_tokens * row_width_;
  }
  const float* open_rows(int32_t open, int64_t layer) const {
    return open_rows_at(open).rows.data() + layer * spec_.block_tokens * row_width_;
  }
  // Reads block blocks[index] of `layer` back into the open rows and makes it the open block.
  void unseal(const int32_t* blocks, int32_t open, int64_t layer, int64_t index);

 private:
  struct OpenRows {
    std::vector<int64_t> open_block;  // [layers]
    std::vector<float> rows;          // [layers][block_tokens][row_width]
    std::atomic<bool> in_use{false};
  };
  // A fixed array of slots, each made on first use (under mutex_) and never moved, so kernels read
  // a slot without a lock; a slot's content belongs to the table holding it. Its size bounds the
  // sequences a per-channel pool serves at once: a sequence with a token holds a block.
  static constexpr int64_t kSpareOpenSlots = 256;
  OpenRows& open_rows_at(int32_t open) { return *open_slots_[checked_open(open)]; }
  const OpenRows& open_rows_at(int32_t open) const { return *open_slots_[checked_open(open)]; }
  size_t checked_open(int32_t open) const;
  size_t offset(int32_t block, int64_t layer, int64_t plane) const {
    const int64_t host = host_index_[static_cast<size_t>(layer)];
    if (host < 0) no_host_planes(layer);
    return static_cast<size_t>(host * spec_.blocks + block) * block_layer_bytes_ +
           (plane == 0 ? 0 : plane_bytes_[0]);
  }
  [[noreturn]] static void no_host_planes(int64_t layer);
  void check_in_use(int32_t id, const char* what) const;  // mutex_ held

  KvPoolSpec spec_;
  int64_t planes_ = 1, row_width_ = 0;
  bool channel_keys_ = false;
  size_t row_bytes_ = 0;
  int64_t quantised_width_ = 0;     // values of a row in dtype; the rest (rope_values) in f16
  size_t plane_bytes_[2] = {0, 0};  // one plane of one block
  size_t block_layer_bytes_ = 0;    // all planes of one block, one layer
  uint64_t bytes_ = 0;
  std::vector<int64_t> host_index_;  // [layers]: the layer's place among the host planes, or -1
  std::unique_ptr<std::byte[]> storage_;
  mutable std::mutex mutex_;
  std::vector<int32_t> free_ids_;
  std::vector<int32_t> refs_;
  std::vector<std::weak_ptr<BlockCopyListener>> copy_listeners_;  // under mutex_
  std::vector<std::weak_ptr<BlockTransfer>> transfers_;           // under mutex_
  int64_t host_layers_ = 0;
  // The live transfers, after checking that each device layer has one.
  std::vector<std::shared_ptr<BlockTransfer>> live_transfers() const;
  void check_block(int32_t block, const char* what) const;
  std::unique_ptr<std::unique_ptr<OpenRows>[]> open_slots_;  // [open_capacity_], per-channel pools only
  size_t open_capacity_ = 0;
  size_t open_made_ = 0;                  // under mutex_
  std::vector<int32_t> free_open_slots_;  // under mutex_
};

// The blocks of one sequence, in position order. Not thread-safe; the pool is.
class BlockTable {
 public:
  BlockTable() = default;
  BlockTable(const BlockTable&) = delete;
  BlockTable& operator=(const BlockTable&) = delete;
  // A moved-from table holds nothing (its open-rows slot goes with the blocks). A table moved into
  // must hold nothing either (release it first): like its blocks, its slot needs the pool to go back.
  BlockTable(BlockTable&& other) noexcept
      : blocks_(std::move(other.blocks_)), open_(std::exchange(other.open_, KvPool::kNoOpenRows)) {}
  BlockTable& operator=(BlockTable&& other) noexcept {
    blocks_ = std::move(other.blocks_);
    open_ = std::exchange(other.open_, KvPool::kNoOpenRows);
    return *this;
  }

  // Makes room for `tokens` positions, taking blocks from the pool; on Error(out_of_memory) the
  // table keeps what it had.
  void reserve(KvPool& pool, int64_t tokens);
  void release(KvPool& pool);  // drops every block reference and the open-rows slot
  // Appends a full block already retained for this table (a prefix cache hit); the table must
  // hold whole blocks only, all of them full.
  void adopt(KvPool& pool, int32_t block);
  // Keeps the blocks holding positions [0, tokens) and releases the rest.
  void truncate(KvPool& pool, int64_t tokens);
  // Keeps the rows of slots `kept` (ascending, each < the slots in use) and moves them to slots
  // [0, kept.size()), in every layer and plane; blocks past them are released. Rows move as
  // stored, except per-channel key rows, which are dequantised and sealed again from the first
  // block that changes.
  void compact(KvPool& pool, std::span<const int64_t> kept);
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
  // The open-rows slot kernels take with the block ids (KvPool::kNoOpenRows without per-channel keys).
  int32_t open_rows() const { return open_; }
  int32_t block_of(const KvPool& pool, int64_t position) const {
    return blocks_[static_cast<size_t>(position / pool.spec().block_tokens)];
  }

  const std::byte* row(const KvPool& pool, int64_t layer, int64_t plane, int64_t position) const {
    return pool.row(block_of(pool, position), layer, plane, position % pool.spec().block_tokens);
  }
  // Writes one position's row; the block must be this table's alone (see make_writable).
  // KvPool::write_position over this table's blocks and open rows.
  void write_row(KvPool& pool, int64_t layer, int64_t plane, int64_t position, const float* values) {
    pool.write_position(blocks_.data(), open_, layer, plane, position, values);
  }
  // KvPool::values_at over this table's blocks and open rows.
  const float* values(const KvPool& pool, int64_t layer, int64_t plane, int64_t position, int64_t first,
                      int64_t n, float* scratch) const {
    return pool.values_at(blocks_.data(), open_, layer, plane, position, first, n, scratch);
  }
  void read_row(const KvPool& pool, int64_t layer, int64_t plane, int64_t position, float* out) const {
    const float* v = values(pool, layer, plane, position, 0, pool.row_width(), out);
    if (v != out) std::copy_n(v, pool.row_width(), out);
  }

 private:
  void ensure_open_rows(KvPool& pool) {
    if (pool.per_channel_plane(0) && open_ == KvPool::kNoOpenRows) open_ = pool.acquire_open_rows();
  }
  // After the table shrank to `tokens` positions: a per-channel block that now holds a partial
  // prefix is reopened (its rows dequantised into the open rows).
  void reopen(KvPool& pool, int64_t tokens);

  std::vector<int32_t> blocks_;
  int32_t open_ = KvPool::kNoOpenRows;  // per-channel key planes only: the pool's open-rows slot
};

}  // namespace tandem
