#pragma once
// Routed experts that live in host memory, streamed over PCIe into VRAM for a prefill on the GPU
// (issue 17's prefill): two slots, each one layer's experts, so the copy of the next layer's experts
// (on a copy stream) overlaps the compute of this one. So that the copies run at PCIe speed, each
// layer's experts are first copied once into a pinned host mirror in the slot's layout (one DMA per
// layer afterwards); page-locking the mapped file in place instead (cudaHostRegister) stalled for
// minutes on the H200 machine. The mirrors cost host memory equal to the streamed experts; a layer
// whose mirror pinned memory refuses is not streamed (the CPU computes it). With
// TANDEM_STREAM_EXPERTS_PAGELOCK=0 the copies come from the mapping, staged by the driver (slower
// than the CPU; for measurements). Host code only (no CUDA headers).
#include <cstdint>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/model/weights.hpp"

namespace tandem::cuda {

class ExpertStreamer {
 public:
  explicit ExpertStreamer(int device);
  ~ExpertStreamer();
  ExpertStreamer(const ExpertStreamer&) = delete;
  ExpertStreamer& operator=(const ExpertStreamer&) = delete;

  // The experts as a kernel table over VRAM rows; work `compute` issues after this call sees the
  // copied rows. Null when they cannot be streamed (mixed types or shapes, or no VRAM for a slot).
  const ExpertTable* acquire(const ExpertWeights& experts, Stream& compute);
  // The compute stream's reads of the acquired slot are all issued (the slot may be refilled after them).
  void release(Stream& compute);
  // Starts copying `next` into the other slot (after the compute that still reads it).
  void prefetch(const ExpertWeights& next, Stream& compute);

  // Makes the pinned mirror of `experts` now (at load), not on their first acquire.
  void mirror(const ExpertWeights& experts);
  uint64_t bytes_copied() const { return bytes_copied_; }

 private:
  struct Range {  // one contiguous host range copied to `offset` in a slot
    const uint8_t* host;
    uint64_t bytes, offset;
  };
  struct Layout {  // where each expert's matrices land in a slot
    std::vector<Range> ranges;
    std::vector<uint64_t> offsets;  // [6 · experts]: gate, up, down, gate/up/down scales (~0: none)
    uint64_t bytes = 0;
    ExpertTable shape;  // types, sizes, row bytes (no pointers)
    bool usable = false;
  };
  struct Slot {
    explicit Slot(int device) : copied(device), released(device) {}
    DeviceBuffer data, pointers;
    void* host_pointers = nullptr;  // pinned [6 · experts] pointers for the table upload
    size_t host_pointer_bytes = 0;
    ExpertTable table;
    const ExpertWeights* holds = nullptr;
    Event copied, released;
    bool ever_released = false, ever_copied = false;
  };

  Layout layout_of(const ExpertWeights& experts) const;
  bool fill(Slot& slot, const ExpertWeights& experts, Stream& compute);
  // The pinned copy of `experts` in `layout`'s slot order, made once (at load through mirror(), else
  // on first use); null once pinned memory has been refused.
  const uint8_t* mirror_of(const ExpertWeights& experts, const Layout& layout);

  int device_;
  bool staged_ = false;  // copy from the mapping, staged by the driver (TANDEM_STREAM_EXPERTS_PAGELOCK=0)
  bool mirror_ = true;   // false once pinned memory was refused: no more streaming
  Stream copy_stream_;
  std::deque<Slot> slots_;  // two; a deque: slots hold events and never move
  int last_ = 1;  // the slot acquired last
  std::map<const ExpertWeights*, void*> mirrors_;  // pinned, freed with the streamer
  uint64_t bytes_copied_ = 0;
};

}  // namespace tandem::cuda
