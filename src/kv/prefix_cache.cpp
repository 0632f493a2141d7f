#include "tandem/kv/prefix_cache.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>

#include "tandem/error.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_host_tier.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {

PrefixCache::PrefixCache(KvPool& pool, std::unique_ptr<KvDiskTier> disk, std::unique_ptr<KvHostTier> host)
    : pool_(pool), disk_(std::move(disk)), host_(std::move(host)) {}

PrefixCache::~PrefixCache() {
  if (disk_) disk_->flush();  // the writes read from the blocks released below
  for (const auto& [key, entry] : entries_) pool_.release_block(entry.block);
}

uint64_t PrefixCache::chain_key(uint64_t parent, std::span<const int32_t> block_ids) {
  return XXH3_64bits_withSeed(block_ids.data(), block_ids.size_bytes(), parent);
}

std::vector<uint64_t> PrefixCache::block_keys(std::span<const int32_t> tokens) const {
  const auto bt = static_cast<size_t>(pool_.spec().block_tokens);
  std::vector<uint64_t> keys;
  uint64_t parent = 0;
  for (size_t b = 0; (b + 1) * bt <= tokens.size(); ++b) {
    parent = chain_key(parent, tokens.subspan(b * bt, bt));
    keys.push_back(parent);
  }
  return keys;
}

std::vector<int32_t> PrefixCache::adopt(std::span<const uint64_t> keys) {
  std::vector<int32_t> blocks;
  while (blocks.size() < keys.size()) {
    const size_t i = blocks.size();
    if (const auto it = entries_.find(keys[i]); it != entries_.end()) {
      pool_.retain_block(it->second.block);
      blocks.push_back(it->second.block);
      continue;
    }
    // Continued from the host tier, else from disk: the run of keys there and not in the pool.
    const auto run_end = [&](auto&& holds) {
      size_t end = i;
      while (end < keys.size() && entries_.count(keys[end]) == 0 && holds(keys[end])) ++end;
      return end;
    };
    Tier tier = Tier::host;
    size_t end = host_ ? run_end([&](uint64_t key) { return host_->contains(key); }) : i;
    if (end == i && disk_) {
      tier = Tier::disk;
      end = run_end([&](uint64_t key) { return disk_->contains(key); });
    }
    if (end == i) break;
    adopt_from(tier, keys.subspan(i, end - i), blocks);
    if (blocks.size() < end) break;  // no room, or a block was missing or bad: the rest is recomputed
  }
  touch(keys.first(blocks.size()));
  return blocks;
}

void PrefixCache::adopt_from(Tier tier, std::span<const uint64_t> keys, std::vector<int32_t>& blocks) {
  // Fresh blocks for the run: unreferenced cached blocks give way (the ones adopted so far are
  // held by the caller now), going to the host tier without pushing the run out of it; a pool
  // that still has no room shortens the run.
  make_room(static_cast<int64_t>(keys.size()), tier == Tier::host ? keys : std::span<const uint64_t>{});
  std::vector<int32_t> fresh;
  try {
    while (fresh.size() < keys.size()) fresh.push_back(pool_.allocate_block());
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::out_of_memory) {
      for (const int32_t b : fresh) pool_.release_block(b);
      throw;
    }
  }
  size_t good = 0;
  try {
    if (tier == Tier::disk) {
      good = disk_->load(keys.first(fresh.size()), fresh);
    } else {
      good = host_->load_run(keys.first(fresh.size()), fresh);
    }
  } catch (...) {
    for (const int32_t b : fresh) pool_.release_block(b);
    throw;
  }
  for (size_t i = 0; i < fresh.size(); ++i) {
    if (i >= good) {
      pool_.release_block(fresh[i]);
      continue;
    }
    // The fresh block's one reference is the cache's; the caller gets another.
    entries_.emplace(keys[i], Entry{fresh[i], 0});
    pool_.retain_block(fresh[i]);
    blocks.push_back(fresh[i]);
  }
}

void PrefixCache::touch(std::span<const uint64_t> chain) {
  for (size_t i = chain.size(); i-- > 0;) entries_.at(chain[i]).last_use = ++clock_;
}

void PrefixCache::insert(std::span<const uint64_t> chain, std::span<const int32_t> blocks) {
  for (size_t i = 0; i < chain.size() && i < blocks.size(); ++i) {
    if (entries_.count(chain[i]) != 0) continue;
    pool_.retain_block(blocks[i]);
    entries_.emplace(chain[i], Entry{blocks[i], 0});
    if (disk_) disk_->store(chain[i], blocks[i]);  // write-through: full blocks never change
  }
  touch(chain.first(std::min(chain.size(), blocks.size())));
}

PrefixCache::Entries::iterator PrefixCache::free_cached(Entries::iterator it,
                                                        std::span<const uint64_t> keep) {
  if (host_) host_->store(it->first, it->second.block, keep);
  if (disk_) disk_->wait_for(it->second.block);  // its write still reads from it
  pool_.release_block(it->second.block);
  return entries_.erase(it);
}

void PrefixCache::drop_unreferenced() {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (pool_.ref_count(it->second.block) != 1) {
      ++it;
      continue;
    }
    it = free_cached(it, {});
  }
}

int64_t PrefixCache::idle_blocks() const {
  int64_t idle = 0;
  for (const auto& [key, entry] : entries_)
    if (pool_.ref_count(entry.block) == 1) ++idle;
  return idle;
}

void PrefixCache::make_room(int64_t blocks) { make_room(blocks, {}); }

void PrefixCache::make_room(int64_t blocks, std::span<const uint64_t> keep) {
  while (pool_.free_blocks() < blocks) {
    auto victim = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (pool_.ref_count(it->second.block) == 1 &&
          (victim == entries_.end() || it->second.last_use < victim->second.last_use))
        victim = it;
    if (victim == entries_.end()) return;
    free_cached(victim, keep);
  }
}

}  // namespace tandem
