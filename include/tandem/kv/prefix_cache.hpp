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
//
// When the pool's layers live on a GPU, a host tier (kv_host_tier.hpp) sits between the two: a
// cached block the pool frees is copied to pinned host memory first, and adopt() continues a run
// found in the pool with the host tier's blocks, then with the disk's (each copied back into fresh
// pool blocks). Tiers below the pool reach the pool's bytes through KvPool::export_block and
// import_block, so a GPU's layers move as a CPU pool's do.
// Not thread-safe: the engine calls it under its lock.
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

namespace tandem {

class KvPool;
class KvDiskTier;
class KvHostTier;

class PrefixCache {
 public:
  explicit PrefixCache(KvPool& pool, std::unique_ptr<KvDiskTier> disk = nullptr,
                       std::unique_ptr<KvHostTier> host = nullptr);
  ~PrefixCache();  // waits for the disk writes in flight, releases every cached block
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The chained keys of the full blocks of `tokens` (a partial last block has none).
  std::vector<uint64_t> block_keys(std::span<const int32_t> tokens) const;
  // Key of one block of ids after the block whose key is `parent` (0: the first block).
  static uint64_t chain_key(uint64_t parent, std::span<const int32_t> block_ids);

  // The longest cached run of `keys` from the first — in the pool, then continued from the host
  // tier and the disk tier: its block ids, each retained for the caller. Blocks copied back from a
  // tier join the cache.
  std::vector<int32_t> adopt(std::span<const uint64_t> keys);
  // Caches blocks[i] under chain[i] (one more reference each) where that key is not cached yet;
  // `chain` is a whole prefix's keys from the first block, `blocks` the session's blocks for them.
  void insert(std::span<const uint64_t> chain, std::span<const int32_t> blocks);
  // Frees cached blocks that no session holds, least recently used first, until the pool has
  // `blocks` free blocks or none is left to free (each copied to the host tier first, if any).
  void make_room(int64_t blocks);

  int64_t cached_blocks() const { return static_cast<int64_t>(entries_.size()); }
  // Cached blocks no session holds (only the cache's reference keeps them).
  int64_t idle_blocks() const;
  KvDiskTier* disk() { return disk_.get(); }  // nullptr without an SSD tier
  KvHostTier* host() { return host_.get(); }  // nullptr without a host tier
  // Frees every cached block no session holds (copied to the host tier first, if any; the disk
  // tier keeps its copies).
  void drop_unreferenced();

 private:
  struct Entry {
    int32_t block;
    uint64_t last_use;
  };
  using Entries = std::unordered_map<uint64_t, Entry>;
  KvPool& pool_;
  std::unique_ptr<KvDiskTier> disk_;
  std::unique_ptr<KvHostTier> host_;
  enum class Tier { host, disk };
  // Adopts a tier's run of `keys` into fresh blocks (appended to `blocks`, retained); shorter when
  // the pool has no room or a block is missing or bad there.
  void adopt_from(Tier tier, std::span<const uint64_t> keys, std::vector<int32_t>& blocks);
  // Frees a cached block no session holds, after copying it to the host tier (where the blocks
  // of `keep` are not dropped for it).
  Entries::iterator free_cached(Entries::iterator it, std::span<const uint64_t> keep);
  // make_room, keeping the host tier's blocks of `keep`.
  void make_room(int64_t blocks, std::span<const uint64_t> keep);
  // Marks a chain used, its deepest block least recent (so eviction trims chains from the end).
  void touch(std::span<const uint64_t> chain);

  Entries entries_;
  uint64_t clock_ = 0;
};

}  // namespace tandem
