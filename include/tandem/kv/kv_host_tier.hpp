#pragma once
// The host tier of the prefix cache for a KV pool whose layers live on a GPU: full blocks the
// VRAM pool lets go of, kept in pinned host memory (Backend::allocate_host) so a later prompt
// with the same prefix copies them back over PCIe instead of computing them again.
//
// A fixed number of block-sized slots, allocated once; each holds one block's bytes as
// KvPool::export_block lays them out (every layer, layer after layer), keyed by the block's
// token-hash chain key (prefix_cache.hpp). When every slot is taken, storing a new block drops the
// least recently used one (the prefix cache keeps the run it is adopting from being dropped while
// it makes room in the pool for it). A block stays here after it is loaded back (the VRAM pool may let go of
// it again; the copy is still good, so that costs nothing). A tier of 0 blocks holds nothing.
//
// Not thread-safe: the prefix cache calls it under the engine's lock.
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "tandem/backend/device_buffer.hpp"

namespace tandem {

class Backend;
class KvPool;

struct KvHostStats {
  int64_t capacity_blocks = 0;  // slots
  uint64_t capacity_bytes = 0;  // their host memory
  int64_t blocks = 0;           // slots holding a block
  int64_t stored = 0;           // blocks copied in from the pool
  int64_t loaded = 0;           // blocks copied back into the pool (hits)
  int64_t evicted = 0;          // blocks dropped to make room
};

class KvHostTier {
 public:
  // `blocks` slots of pool.block_bytes(), from `memory_from`'s allocate_host (pinned on a GPU
  // backend). Error(invalid_argument) for a negative count, Error(out_of_memory) from the
  // allocation.
  KvHostTier(KvPool& pool, int64_t blocks, Backend& memory_from);
  ~KvHostTier();  // after the device copies still reading its slots (KvPool::settle_imports)
  KvHostTier(const KvHostTier&) = delete;
  KvHostTier& operator=(const KvHostTier&) = delete;

  bool contains(uint64_t key) const { return index_.count(key) != 0; }
  // Copies pool block `block` (in use) in under `key`; a key already here is only marked recent.
  // When every slot is taken, the least recently used block not in `keep` is dropped; with none
  // to drop, the block is not stored.
  void store(uint64_t key, int32_t block, std::span<const uint64_t> keep = {});
  // Copies the block under `key` into pool block `block` (in use); false when the key is not here.
  bool load(uint64_t key, int32_t block);
  // load of keys[i] into blocks[i] for the leading keys that are here, their copies issued together
  // (KvPool::import_blocks, HostCopies::kept: a GPU may still be copying when it returns); returns how
  // many were loaded.
  size_t load_run(std::span<const uint64_t> keys, std::span<const int32_t> blocks);
  // Marks `key` most recently used (when here), so the next stores drop others first.
  void touch(uint64_t key);
  void clear();  // drops every block
  KvHostStats stats() const;
  uint64_t bytes() const { return memory_.bytes(); }  // its pinned memory, fixed at construction

 private:
  struct Entry {
    int64_t slot;
    std::list<uint64_t>::iterator lru;  // position in lru_ (front: least recently used)
  };
  std::byte* slot_data(int64_t slot) const;

  KvPool& pool_;
  int64_t capacity_ = 0;
  DeviceBuffer memory_;
  std::vector<int64_t> free_slots_;
  std::unordered_map<uint64_t, Entry> index_;
  std::list<uint64_t> lru_;
  KvHostStats stats_;
};

}  // namespace tandem
