#pragma once
// The GPU expert cache of one MoE layer (issue 17 item 4): the layer's routed experts live in host
// memory and run on the CPU, except the ones held here — a fixed number of slots in VRAM, filled
// from the mapping with the experts the engine chose (the most routed so far). Its kernel table is
// indexed by the layer's own expert numbers, so the routed-expert kernels run unchanged on pairs
// whose id is a held expert (split_cached_experts gives the GPU only those, and -1 for the rest);
// a number that is not held points at a held expert's rows, so a stray id reads valid memory.
// Host code only (no CUDA headers).
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/model/weights.hpp"

namespace tandem::cuda {

class ExpertCache {
 public:
  // Slots for `capacity` experts shaped as `experts`; null when the experts are unlike each other
  // (types, shapes), carry block scales or biases, or are of a type the kernels do not read.
  // Error(out_of_memory) when the slots do not fit.
  static std::unique_ptr<ExpertCache> make(int device, const ExpertWeights& experts, int64_t capacity);

  // Holds exactly `ids` (distinct, within the layer, at most the capacity) from now on: experts
  // already held keep their slots, new ones are copied in from host memory on `stream`, and the
  // table and held map are updated there (work queued on `stream` before this call reads the old
  // ones). Error(invalid_argument) for ids that are repeated, out of range or too many.
  void hold(std::span<const int32_t> ids, Stream& stream);

  const ExpertTable& table() const { return table_; }
  const int32_t* held_map() const { return static_cast<const int32_t*>(map_.data()); }  // device [experts]
  int64_t capacity() const { return capacity_; }
  uint64_t bytes() const { return slots_.bytes() + pointers_.bytes() + map_.bytes(); }
  uint64_t bytes_copied() const { return bytes_copied_; }

 private:
  ExpertCache(const ExpertWeights& experts, const ExpertTable& shape, int64_t capacity, uint64_t slot_bytes);

  const ExpertWeights& experts_;
  ExpertTable table_;
  int64_t capacity_;
  uint64_t gate_bytes_, up_bytes_, down_bytes_, slot_bytes_;
  DeviceBuffer slots_, pointers_, map_;
  std::vector<int32_t> slot_of_;     // [experts]: the slot holding the expert, or -1
  std::vector<int32_t> holder_;      // [capacity]: the expert in the slot, or -1
  std::vector<const void*> host_pointers_;  // [3 · experts]
  std::vector<int32_t> host_map_;           // [experts]
  uint64_t bytes_copied_ = 0;
};

}  // namespace tandem::cuda
