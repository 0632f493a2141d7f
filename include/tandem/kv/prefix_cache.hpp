#pragma once
// The prefix cache: full KV blocks kept after their session moves on, so a later session whose
// prompt starts with the same tokens adopts them instead of computing them again.
//
// A block is keyed by a hash chain of token ids (xxHash3-64): block i's key is the hash of its
// block_tokens ids seeded with block i-1's key (0 for the first block), so equal keys mean equal
// whole prefixes. The cache holds one reference to each cached block; a session adopting one
// takes another (shared blocks are copy-on-write, and full blocks are never written again). When
// the pool needs blocks, cached blocks no session holds are freed, least recently used first.
//
// With an SSD tier (kv_disk_tier.hpp) under it, every block joining the cache is also written to
// disk (write-through, asynchronously, straight from the pool), so a block freed from memory —
// or cached by an earlier process serving the same model — is still found: adopt() continues a
// run that ends in memory with the records that follow it on disk, read back into fresh blocks
// (all at once, before the prefill of the rest; a bad record ends the run and is recomputed).
// Not thread-safe: the engine calls it under its lock.
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

namespace tandem {

class KvPool;
class KvDiskTier;

class PrefixCache {
 public:
  explicit PrefixCache(KvPool& pool, std::unique_ptr<KvDiskTier> disk = nullptr);
  ~PrefixCache();  // waits for the disk writes in flight, releases every cached block
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The chained keys of the full blocks of `tokens` (a partial last block has none).
  std::vector<uint64_t> block_keys(std::span<const int32_t> tokens) const;
  // Key of one block of ids after the block whose key is `parent` (0: the first block).
  static uint64_t chain_key(uint64_t parent, std::span<const int32_t> block_ids);

  // The longest cached run of `keys` from the first — in memory, then continued from the disk
  // tier: its block ids, each retained for the caller. Blocks read from disk join the cache.
  std::vector<int32_t> adopt(std::span<const uint64_t> keys);
  // Caches blocks[i] under chain[i] (one more reference each) where that key is not cached yet;
  // `chain` is a whole prefix's keys from the first block, `blocks` the session's blocks for them.
  void insert(std::span<const uint64_t> chain, std::span<const int32_t> blocks);
  // Frees cached blocks that no session holds, least recently used first, until the pool has
  // `blocks` free blocks or none is left to free.
  void make_room(int64_t blocks);

  int64_t cached_blocks() const { return static_cast<int64_t>(entries_.size()); }
  // Cached blocks no session holds (only the cache's reference keeps them).
  int64_t idle_blocks() const;
  KvDiskTier* disk() { return disk_.get(); }  // nullptr without an SSD tier
  // Frees every cached block no session holds (the disk tier keeps its copies).
  void drop_unreferenced();

 private:
  struct Entry {
    int32_t block;
    uint64_t last_use;
  };
  KvPool& pool_;
  std::unique_ptr<KvDiskTier> disk_;
  // Adopts the disk tier's run of `keys` into fresh blocks (appended to `blocks`, retained).
  void adopt_from_disk(std::span<const uint64_t> keys, std::vector<int32_t>& blocks);
  // Marks a chain used, its deepest block least recent (so eviction trims chains from the end).
  void touch(std::span<const uint64_t> chain);

  std::unordered_map<uint64_t, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace tandem
