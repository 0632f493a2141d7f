#include "tandem/kv/kv_pool.hpp"

#include <fmt/format.h>

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
  if (spec.device.kind != DeviceKind::cpu)
    throw Error(ErrorKind::unsupported,
                "KV pool: only cpu pools exist in this build, asked for " + spec.device.to_string());
  if (spec.blocks > std::numeric_limits<int32_t>::max())
    throw Error(ErrorKind::out_of_range,
                fmt::format("KV pool: {} blocks is more than block ids can address", spec.blocks));
  const double floats = static_cast<double>(spec.layers) * static_cast<double>(spec.values_per_token) *
                        static_cast<double>(spec.block_tokens) * static_cast<double>(spec.blocks);
  if (floats * sizeof(float) > static_cast<double>(std::numeric_limits<int64_t>::max() / 2))
    throw Error(ErrorKind::out_of_memory, "KV pool: requested size overflows");
  try {
    storage_.assign(static_cast<size_t>(floats), 0.0f);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory,
                fmt::format("KV pool: cannot allocate {} bytes", floats * sizeof(float)));
  }
  in_use_.assign(static_cast<size_t>(spec.blocks), 0);
  free_ids_.reserve(static_cast<size_t>(spec.blocks));
  for (int64_t b = spec.blocks - 1; b >= 0; --b) free_ids_.push_back(static_cast<int32_t>(b));
}

int64_t KvPool::free_blocks() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(free_ids_.size());
}

int32_t KvPool::allocate_block() {
  std::lock_guard lock(mutex_);
  if (free_ids_.empty())
    throw Error(ErrorKind::out_of_memory,
                fmt::format("KV pool exhausted: all {} blocks of {} tokens are in use", spec_.blocks,
                            spec_.block_tokens));
  const int32_t id = free_ids_.back();
  free_ids_.pop_back();
  in_use_[static_cast<size_t>(id)] = 1;
  return id;
}

void KvPool::free_block(int32_t id) {
  std::lock_guard lock(mutex_);
  if (id < 0 || id >= spec_.blocks || !in_use_[static_cast<size_t>(id)])
    throw Error(ErrorKind::internal, fmt::format("KV pool: block {} freed but not in use", id));
  in_use_[static_cast<size_t>(id)] = 0;
  free_ids_.push_back(id);
}

void BlockTable::reserve(KvPool& pool, int64_t tokens) {
  const int64_t bt = pool.spec().block_tokens;
  const size_t needed = static_cast<size_t>((tokens + bt - 1) / bt);
  const size_t had = blocks_.size();
  try {
    while (blocks_.size() < needed) blocks_.push_back(pool.allocate_block());
  } catch (...) {
    while (blocks_.size() > had) {
      pool.free_block(blocks_.back());
      blocks_.pop_back();
    }
    throw;
  }
}

void BlockTable::release(KvPool& pool) {
  for (int32_t id : blocks_) pool.free_block(id);
  blocks_.clear();
}

}  // namespace tandem
