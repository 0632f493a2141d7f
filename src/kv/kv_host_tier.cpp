#include "tandem/kv/kv_host_tier.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "tandem/backend/backend.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {

KvHostTier::KvHostTier(KvPool& pool, int64_t blocks, Backend& memory_from) : pool_(pool), capacity_(blocks) {
  if (blocks < 0) throw Error(ErrorKind::invalid_argument, fmt::format("KV host tier: {} blocks", blocks));
  const size_t block_bytes = pool.block_bytes();
  if (blocks > 0 && static_cast<uint64_t>(blocks) > std::numeric_limits<size_t>::max() / block_bytes)
    throw Error(ErrorKind::out_of_memory,
                fmt::format("KV host tier: {} blocks of {} bytes overflow", blocks, block_bytes));
  if (blocks > 0) memory_ = memory_from.allocate_host(static_cast<size_t>(blocks) * block_bytes);
  free_slots_.reserve(static_cast<size_t>(blocks));
  for (int64_t slot = blocks - 1; slot >= 0; --slot) free_slots_.push_back(slot);
  stats_.capacity_blocks = blocks;
  stats_.capacity_bytes = static_cast<uint64_t>(blocks) * block_bytes;
}

KvHostTier::~KvHostTier() {
  try {
    pool_.settle_imports();
  } catch (...) {  // a failed GPU already reported its error; its copies are gone with it
  }
}

std::byte* KvHostTier::slot_data(int64_t slot) const {
  return memory_.as<std::byte>() + static_cast<size_t>(slot) * pool_.block_bytes();
}

void KvHostTier::touch(uint64_t key) {
  const auto it = index_.find(key);
  if (it != index_.end()) lru_.splice(lru_.end(), lru_, it->second.lru);
}

void KvHostTier::store(uint64_t key, int32_t block, std::span<const uint64_t> keep) {
  if (capacity_ == 0) return;
  if (contains(key)) {
    touch(key);
    return;
  }
  if (free_slots_.empty()) {
    const auto kept = [&](uint64_t k) { return std::find(keep.begin(), keep.end(), k) != keep.end(); };
    const auto lru = std::find_if_not(lru_.begin(), lru_.end(), kept);
    if (lru == lru_.end()) return;
    const auto victim = index_.find(*lru);
    free_slots_.push_back(victim->second.slot);
    lru_.erase(lru);
    index_.erase(victim);
    ++stats_.evicted;
  }
  const int64_t slot = free_slots_.back();
  pool_.export_block(block, slot_data(slot));  // throws before the slot is taken
  free_slots_.pop_back();
  lru_.push_back(key);
  index_.emplace(key, Entry{slot, std::prev(lru_.end())});
  ++stats_.stored;
}

bool KvHostTier::load(uint64_t key, int32_t block) {
  return load_run(std::span<const uint64_t>(&key, 1), std::span<const int32_t>(&block, 1)) == 1;
}

size_t KvHostTier::load_run(std::span<const uint64_t> keys, std::span<const int32_t> blocks) {
  std::vector<const std::byte*> sources;
  for (size_t i = 0; i < keys.size() && i < blocks.size(); ++i) {
    const auto it = index_.find(keys[i]);
    if (it == index_.end()) break;
    sources.push_back(slot_data(it->second.slot));
  }
  pool_.import_blocks(blocks.first(sources.size()), sources, HostCopies::kept);  // a slot changes by export_block only
  for (size_t i = 0; i < sources.size(); ++i) touch(keys[i]);
  stats_.loaded += static_cast<int64_t>(sources.size());
  return sources.size();
}

void KvHostTier::clear() {
  for (const auto& [key, entry] : index_) free_slots_.push_back(entry.slot);
  index_.clear();
  lru_.clear();
}

KvHostStats KvHostTier::stats() const {
  KvHostStats s = stats_;
  s.blocks = static_cast<int64_t>(index_.size());
  return s;
}

}  // namespace tandem
