#pragma once
// The prefix cache: full KV blocks kept after their session moves on, so a later session whose
// prompt starts with the same tokens adopts them instead of computing them again.
//
// A block is keyed by a hash chain of token ids (xxHash3-64): block i's key is the hash of its
// block_tokens ids seeded with block i-1's key (0 for the first block), so equal keys mean equal
// whole prefixes. The cache holds one reference to each cached block; a session adopting one
// takes another (shared blocks are copy-on-write, and full blocks are never written again). When
// the pool needs blocks, cached blocks no session holds are freed, least recently used first.
// Not thread-safe: the engine calls it under its lock.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace tandem {

class KvPool;

class PrefixCache {
 public:
  explicit PrefixCache(KvPool& pool) : pool_(pool) {}
  ~PrefixCache();  // releases every cached block
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The chained keys of the full blocks of `tokens` (a partial last block has none).
  std::vector<uint64_t> block_keys(std::span<const int32_t> tokens) const;
  // Key of one block of ids after the block whose key is `parent` (0: the first block).
  static uint64_t chain_key(uint64_t parent, std::span<const int32_t> block_ids);

  // The longest cached run of `keys` from the first: its block ids, each retained for the caller.
  std::vector<int32_t> adopt(std::span<const uint64_t> keys);
  // Caches blocks[i] under chain[i] (one more reference each) where that key is not cached yet;
  // `chain` is a whole prefix's keys from the first block, `blocks` the session's blocks for them.
  void insert(std::span<const uint64_t> chain, std::span<const int32_t> blocks);
  // Frees cached blocks that no session holds, least recently used first, until the pool has
  // `blocks` free blocks or none is left to free.
  void make_room(int64_t blocks);

  int64_t cached_blocks() const { return static_cast<int64_t>(entries_.size()); }

 private:
  struct Entry {
    int32_t block;
    uint64_t last_use;
  };
  KvPool& pool_;
  // Marks a chain used, its deepest block least recent (so eviction trims chains from the end).
  void touch(std::span<const uint64_t> chain);

  std::unordered_map<uint64_t, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace tandem
