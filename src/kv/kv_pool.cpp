#include "tandem/kv/kv_pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#include "tandem/error.hpp"

namespace tandem {

KvPool::KvPool(const KvPoolSpec& spec) : spec_(spec) {
  if (spec.layers <= 0 || spec.values_per_token <= 0 || spec.block_tokens <= 0 || spec.blocks <= 0)
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format(
            "KV pool: sizes must be positive (layers {}, values per token {}, block tokens {}, blocks {})",
            spec.layers, spec.values_per_token, spec.block_tokens, spec.blocks));
  if (spec.layout == KvLayout::gqa && spec.values_per_token % 2 != 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("KV pool: a GQA token holds K and V of equal width, got {} values per token",
                            spec.values_per_token));
  if (spec.device.kind != DeviceKind::cpu)
    throw Error(ErrorKind::unsupported,
                "KV pool: only cpu pools exist in this build, asked for " + spec.device.to_string());
  if (spec.blocks > std::numeric_limits<int32_t>::max())
    throw Error(ErrorKind::out_of_range,
                fmt::format("KV pool: {} blocks is more than block ids can address", spec.blocks));
  planes_ = spec.layout == KvLayout::gqa ? 2 : 1;
  row_width_ = spec.values_per_token / planes_;
  row_bytes_ = static_cast<size_t>(row_width_) * kv_type_bytes(spec.dtype);
  const double total = static_cast<double>(spec.layers) * static_cast<double>(spec.values_per_token) *
                       static_cast<double>(spec.block_tokens) * static_cast<double>(spec.blocks) *
                       static_cast<double>(kv_type_bytes(spec.dtype));
  if (total > static_cast<double>(std::numeric_limits<int64_t>::max() / 2))
    throw Error(ErrorKind::out_of_memory, "KV pool: requested size overflows");
  bytes_ = static_cast<uint64_t>(total);
  try {
    // Value-initialised: a fresh pool reads as zeros, as the float32 pool did.
    storage_ = std::make_unique<std::byte[]>(static_cast<size_t>(bytes_));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory, fmt::format("KV pool: cannot allocate {} bytes", bytes_));
  }
  refs_.assign(static_cast<size_t>(spec.blocks), 0);
  free_ids_.reserve(static_cast<size_t>(spec.blocks));
  for (int64_t b = spec.blocks - 1; b >= 0; --b) free_ids_.push_back(static_cast<int32_t>(b));
}

int64_t KvPool::free_blocks() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(free_ids_.size());
}

void KvPool::check_in_use(int32_t id, const char* what) const {
  if (id < 0 || id >= spec_.blocks || refs_[static_cast<size_t>(id)] <= 0)
    throw Error(ErrorKind::internal, fmt::format("KV pool: block {} {} but not in use", id, what));
}

int32_t KvPool::allocate_block() {
  std::lock_guard lock(mutex_);
  if (free_ids_.empty())
    throw Error(ErrorKind::out_of_memory,
                fmt::format("KV pool exhausted: all {} blocks of {} tokens are in use", spec_.blocks,
                            spec_.block_tokens));
  const int32_t id = free_ids_.back();
  free_ids_.pop_back();
  refs_[static_cast<size_t>(id)] = 1;
  return id;
}

void KvPool::retain_block(int32_t id) {
  std::lock_guard lock(mutex_);
  check_in_use(id, "retained");
  ++refs_[static_cast<size_t>(id)];
}

void KvPool::release_block(int32_t id) {
  std::lock_guard lock(mutex_);
  check_in_use(id, "released");
  if (--refs_[static_cast<size_t>(id)] == 0) free_ids_.push_back(id);
}

int32_t KvPool::ref_count(int32_t id) const {
  std::lock_guard lock(mutex_);
  if (id < 0 || id >= spec_.blocks) return 0;
  return refs_[static_cast<size_t>(id)];
}

int32_t KvPool::copy_block(int32_t id) {
  {
    std::lock_guard lock(mutex_);
    check_in_use(id, "copied");
  }
  const int32_t fresh = allocate_block();
  // One layer's rows of one block are contiguous: planes × slots rows.
  const size_t block_bytes = static_cast<size_t>(planes_ * spec_.block_tokens) * row_bytes_;
  for (int64_t layer = 0; layer < spec_.layers; ++layer)
    std::memcpy(row(fresh, layer, 0, 0), row(id, layer, 0, 0), block_bytes);
  return fresh;
}

void BlockTable::reserve(KvPool& pool, int64_t tokens) {
  const int64_t bt = pool.spec().block_tokens;
  const size_t needed = static_cast<size_t>((tokens + bt - 1) / bt);
  const size_t had = blocks_.size();
  try {
    while (blocks_.size() < needed) blocks_.push_back(pool.allocate_block());
  } catch (...) {
    while (blocks_.size() > had) {
      pool.release_block(blocks_.back());
      blocks_.pop_back();
    }
    throw;
  }
}

void BlockTable::release(KvPool& pool) { truncate(pool, 0); }

void BlockTable::truncate(KvPool& pool, int64_t tokens) {
  const int64_t bt = pool.spec().block_tokens;
  const size_t keep = static_cast<size_t>((std::max<int64_t>(tokens, 0) + bt - 1) / bt);
  while (blocks_.size() > keep) {
    pool.release_block(blocks_.back());
    blocks_.pop_back();
  }
}

BlockTable BlockTable::share_prefix(KvPool& pool, int64_t tokens) const {
  if (tokens < 0 || tokens > capacity_tokens(pool))
    throw Error(ErrorKind::out_of_range, fmt::format("KV: cannot share {} positions of a table holding {}",
                                                     tokens, capacity_tokens(pool)));
  const int64_t bt = pool.spec().block_tokens;
  BlockTable shared;
  const size_t n = static_cast<size_t>((tokens + bt - 1) / bt);
  shared.blocks_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    pool.retain_block(blocks_[i]);
    shared.blocks_.push_back(blocks_[i]);
  }
  return shared;
}

void BlockTable::make_writable(KvPool& pool, int64_t begin, int64_t end) {
  if (end <= begin) return;
  const int64_t bt = pool.spec().block_tokens;
  const size_t first = static_cast<size_t>(begin / bt);
  const size_t last = std::min(blocks_.size(), static_cast<size_t>((end + bt - 1) / bt));
  for (size_t i = first; i < last; ++i) {
    const int32_t id = blocks_[i];
    if (pool.ref_count(id) <= 1) continue;
    const int32_t copy = pool.copy_block(id);  // throws before anything changes
    pool.release_block(id);
    blocks_[i] = copy;
  }
}

}  // namespace tandem
