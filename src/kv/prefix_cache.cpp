#include "tandem/kv/prefix_cache.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>

#include "tandem/kv/kv_pool.hpp"

namespace tandem {

PrefixCache::~PrefixCache() {
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
  for (const uint64_t key : keys) {
    const auto it = entries_.find(key);
    if (it == entries_.end()) break;
    pool_.retain_block(it->second.block);
    blocks.push_back(it->second.block);
  }
  touch(keys.first(blocks.size()));
  return blocks;
}

void PrefixCache::touch(std::span<const uint64_t> chain) {
  for (size_t i = chain.size(); i-- > 0;) entries_.at(chain[i]).last_use = ++clock_;
}

void PrefixCache::insert(std::span<const uint64_t> chain, std::span<const int32_t> blocks) {
  for (size_t i = 0; i < chain.size() && i < blocks.size(); ++i) {
    if (entries_.count(chain[i]) != 0) continue;
    pool_.retain_block(blocks[i]);
    entries_.emplace(chain[i], Entry{blocks[i], 0});
  }
  touch(chain.first(std::min(chain.size(), blocks.size())));
}

void PrefixCache::make_room(int64_t blocks) {
  while (pool_.free_blocks() < blocks) {
    auto victim = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (pool_.ref_count(it->second.block) == 1 &&
          (victim == entries_.end() || it->second.last_use < victim->second.last_use))
        victim = it;
    if (victim == entries_.end()) return;
    pool_.release_block(victim->second.block);
    entries_.erase(victim);
  }
}

}  // namespace tandem
