#include "expert_cache.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "expert_shape.hpp"
#include "tandem/error.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {
namespace {

constexpr uint64_t kAlign = 256;

uint64_t aligned(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

std::unique_ptr<ExpertCache> ExpertCache::make(int device, const ExpertWeights& ew, int64_t capacity) {
  const auto count = static_cast<int64_t>(ew.count());
  const std::optional<ExpertShape> shape = alike_expert_shape(ew);
  if (!shape || shape->scaled || capacity <= 0 || capacity > count) return nullptr;
  const ExpertTable& t = shape->table;
  if (!weight_type_supported(t.gate_type) || !weight_type_supported(t.down_type)) return nullptr;
  const LinearWeight& d0 = ew.down[0];
  const uint64_t slot_bytes = aligned(static_cast<uint64_t>(t.intermediate * t.gate_row_bytes)) +
                              aligned(static_cast<uint64_t>(t.intermediate * t.up_row_bytes)) +
                              aligned(static_cast<uint64_t>(d0.out_features() * t.down_row_bytes));
  std::unique_ptr<ExpertCache> cache(new ExpertCache(ew, t, capacity, slot_bytes));
  cache->slots_ = DeviceBuffer(device, static_cast<size_t>(slot_bytes * static_cast<uint64_t>(capacity)));
  cache->pointers_ = DeviceBuffer(device, static_cast<size_t>(3 * count) * sizeof(void*));
  cache->map_ = DeviceBuffer(device, static_cast<size_t>(count) * sizeof(int32_t));
  const auto* base = static_cast<const void* const*>(cache->pointers_.data());
  cache->table_.gate = base;
  cache->table_.up = base + count;
  cache->table_.down = base + 2 * count;
  return cache;
}

ExpertCache::ExpertCache(const ExpertWeights& experts, const ExpertTable& shape, int64_t capacity, uint64_t slot_bytes)
    : experts_(experts),
      table_(shape),
      capacity_(capacity),
      gate_bytes_(static_cast<uint64_t>(shape.intermediate * shape.gate_row_bytes)),
      up_bytes_(static_cast<uint64_t>(shape.intermediate * shape.up_row_bytes)),
      down_bytes_(static_cast<uint64_t>(experts.down[0].out_features() * shape.down_row_bytes)),
      slot_bytes_(slot_bytes),
      slot_of_(static_cast<size_t>(shape.experts), -1),
      holder_(static_cast<size_t>(capacity), -1),
      host_pointers_(static_cast<size_t>(3 * shape.experts), nullptr),
      host_map_(static_cast<size_t>(shape.experts), 0) {}

void ExpertCache::hold(std::span<const int32_t> ids, Stream& stream) {
  const int64_t count = table_.experts;
  if (static_cast<int64_t>(ids.size()) > capacity_)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("expert cache: {} experts asked for, {} slots", ids.size(), capacity_));
  std::vector<char> wanted(static_cast<size_t>(count), 0);
  for (const int32_t e : ids) {
    if (e < 0 || e >= count)
      throw Error(ErrorKind::invalid_argument, fmt::format("expert cache: expert {} outside [0, {})", e, count));
    if (wanted[static_cast<size_t>(e)] != 0)
      throw Error(ErrorKind::invalid_argument, fmt::format("expert cache: expert {} asked for twice", e));
    wanted[static_cast<size_t>(e)] = 1;
  }
  // Free the slots of experts no longer wanted, then fill free slots with the new ones.
  for (int64_t s = 0; s < capacity_; ++s) {
    const int32_t e = holder_[static_cast<size_t>(s)];
    if (e >= 0 && wanted[static_cast<size_t>(e)] == 0) {
      slot_of_[static_cast<size_t>(e)] = -1;
      holder_[static_cast<size_t>(s)] = -1;
    }
  }
  int64_t free_slot = 0;
  auto* base = static_cast<uint8_t*>(slots_.data());
  for (const int32_t e : ids) {
    if (slot_of_[static_cast<size_t>(e)] >= 0) continue;
    while (holder_[static_cast<size_t>(free_slot)] >= 0) ++free_slot;
    uint8_t* slot = base + static_cast<uint64_t>(free_slot) * slot_bytes_;
    const auto i = static_cast<size_t>(e);
    stream.copy_to_device(slot, experts_.gate[i].weight.data, gate_bytes_);
    stream.copy_to_device(slot + aligned(gate_bytes_), experts_.up[i].weight.data, up_bytes_);
    stream.copy_to_device(slot + aligned(gate_bytes_) + aligned(up_bytes_), experts_.down[i].weight.data, down_bytes_);
    bytes_copied_ += gate_bytes_ + up_bytes_ + down_bytes_;
    holder_[static_cast<size_t>(free_slot)] = e;
    slot_of_[i] = static_cast<int32_t>(free_slot);
  }
  // A number not held points at the first held slot (or slot 0 while nothing is): never dereferenced
  // through split ids, but valid memory should a stray id reach a kernel.
  int64_t fallback = 0;
  for (int64_t s = 0; s < capacity_; ++s)
    if (holder_[static_cast<size_t>(s)] >= 0) {
      fallback = s;
      break;
    }
  for (int64_t e = 0; e < count; ++e) {
    const int32_t s = slot_of_[static_cast<size_t>(e)];
    const uint8_t* slot = base + static_cast<uint64_t>(s >= 0 ? s : fallback) * slot_bytes_;
    host_pointers_[static_cast<size_t>(e)] = slot;
    host_pointers_[static_cast<size_t>(count + e)] = slot + aligned(gate_bytes_);
    host_pointers_[static_cast<size_t>(2 * count + e)] = slot + aligned(gate_bytes_) + aligned(up_bytes_);
    host_map_[static_cast<size_t>(e)] = s >= 0 ? 1 : 0;
  }
  stream.copy_to_device(pointers_.data(), host_pointers_.data(), host_pointers_.size() * sizeof(void*));
  stream.copy_to_device(map_.data(), host_map_.data(), host_map_.size() * sizeof(int32_t));
  // The host arrays are reused by the next hold: let these copies finish first.
  stream.synchronize();
}

}  // namespace tandem::cuda
