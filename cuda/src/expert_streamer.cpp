#include "expert_streamer.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "expert_shape.hpp"
#include "tandem/error.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {
namespace {

constexpr uint64_t kAlign = 256;
constexpr uint64_t kNone = ~uint64_t{0};

uint64_t aligned(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

ExpertStreamer::ExpertStreamer(int device) : device_(device), copy_stream_(device) {
  const char* lock = std::getenv("TANDEM_STREAM_EXPERTS_PAGELOCK");
  staged_ = lock != nullptr && std::string_view(lock) == "0";
  mirror_ = !staged_;
  slots_.emplace_back(device);
  slots_.emplace_back(device);
}

ExpertStreamer::~ExpertStreamer() {
  try {
    copy_stream_.synchronize();
  } catch (...) {  // a failed device: nothing left to wait for
  }
  for (Slot& s : slots_) pinned_host_free(s.host_pointers);
  for (const auto& [experts, data] : mirrors_) pinned_host_free(data);
}

ExpertStreamer::Layout ExpertStreamer::layout_of(const ExpertWeights& ew) const {
  Layout l;
  const std::optional<ExpertShape> shape = alike_expert_shape(ew);
  if (!shape) return l;
  l.shape = shape->table;
  const bool scaled = shape->scaled;
  const auto count = static_cast<int64_t>(ew.count());
  l.offsets.assign(static_cast<size_t>(6 * count), kNone);
  // Each matrix kind (and scale kind): one range when the experts sit back to back in one tensor
  // (GGUF's merged [E, out, in]), else one range per expert.
  const auto place = [&](int kind, auto view_of) {
    const TensorView& first = view_of(ew, size_t{0});
    const auto* base = static_cast<const uint8_t*>(first.data);
    bool merged = true;
    for (int64_t e = 0; e < count && merged; ++e) {
      const TensorView& v = view_of(ew, static_cast<size_t>(e));
      merged = v.nbytes == first.nbytes && static_cast<const uint8_t*>(v.data) == base + e * first.nbytes;
    }
    if (merged) {
      const uint64_t offset = l.bytes;
      l.ranges.push_back({base, first.nbytes * static_cast<uint64_t>(count), offset});
      for (int64_t e = 0; e < count; ++e) l.offsets[static_cast<size_t>(kind * count + e)] = offset + e * first.nbytes;
      l.bytes = aligned(offset + first.nbytes * static_cast<uint64_t>(count));
      return;
    }
    for (int64_t e = 0; e < count; ++e) {
      const TensorView& v = view_of(ew, static_cast<size_t>(e));
      l.ranges.push_back({static_cast<const uint8_t*>(v.data), v.nbytes, l.bytes});
      l.offsets[static_cast<size_t>(kind * count + e)] = l.bytes;
      l.bytes = aligned(l.bytes + v.nbytes);
    }
  };
  place(0, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.gate[e].weight; });
  place(1, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.up[e].weight; });
  place(2, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.down[e].weight; });
  if (scaled) {
    place(3, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.gate[e].scale_inv; });
    place(4, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.up[e].scale_inv; });
    place(5, [](const ExpertWeights& w, size_t e) -> const TensorView& { return w.down[e].scale_inv; });
  }
  l.usable = true;
  return l;
}

void ExpertStreamer::mirror(const ExpertWeights& experts) {
  const Layout l = layout_of(experts);
  if (l.usable) mirror_of(experts, l);
}

const uint8_t* ExpertStreamer::mirror_of(const ExpertWeights& experts, const Layout& l) {
  if (!mirror_) return nullptr;
  if (const auto it = mirrors_.find(&experts); it != mirrors_.end()) return static_cast<const uint8_t*>(it->second);
  void* data = nullptr;
  try {
    data = pinned_host_allocate(l.bytes);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::out_of_memory) throw;
    mirror_ = false;  // the host is out of pinned memory: no layer is streamed from now on
    return nullptr;
  }
  auto* base = static_cast<uint8_t*>(data);
  for (const Range& r : l.ranges) std::memcpy(base + r.offset, r.host, r.bytes);
  mirrors_.emplace(&experts, data);
  return base;
}

bool ExpertStreamer::fill(Slot& slot, const ExpertWeights& experts, Stream& compute) {
  const Layout l = layout_of(experts);
  if (!l.usable) return false;
  // Without a pinned mirror (refused: the host is short of pinned memory) the driver's staged copies
  // are slower than the CPU computing the experts (0.76x measured), so the CPU takes them.
  const uint8_t* mirror = staged_ ? nullptr : mirror_of(experts, l);
  if (!staged_ && mirror == nullptr) return false;
  const int64_t count = l.shape.experts;
  const size_t pointer_bytes = static_cast<size_t>(6 * count) * sizeof(void*);
  if (slot.ever_copied) slot.copied.synchronize();  // the last table upload from host_pointers is done
  try {
    if (slot.data.bytes() < l.bytes) {
      compute.synchronize();  // the old buffer may still be read
      copy_stream_.synchronize();
      slot.data = DeviceBuffer();
      slot.data = DeviceBuffer(device_, l.bytes);
    }
    if (slot.pointers.bytes() < pointer_bytes) slot.pointers = DeviceBuffer(device_, pointer_bytes);
    if (slot.host_pointer_bytes < pointer_bytes) {
      pinned_host_free(slot.host_pointers);
      slot.host_pointers = nullptr;
      slot.host_pointers = pinned_host_allocate(pointer_bytes);
      slot.host_pointer_bytes = pointer_bytes;
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::out_of_memory) {  // no room for a slot: the caller runs the experts elsewhere
      slot.data = DeviceBuffer();
      slot.holds = nullptr;
      return false;
    }
    throw;
  }
  auto* base = static_cast<uint8_t*>(slot.data.data());
  auto* ptrs = static_cast<const void**>(slot.host_pointers);
  for (size_t i = 0; i < l.offsets.size(); ++i) ptrs[i] = l.offsets[i] == kNone ? nullptr : base + l.offsets[i];
  if (slot.ever_released) slot.released.wait_on(copy_stream_);  // the compute still reading the slot
  copy_stream_.make_current();
  if (mirror != nullptr) {
    copy_stream_.copy_to_device(base, mirror, l.bytes);  // one DMA from pinned memory
  } else {
    for (const Range& r : l.ranges) copy_stream_.copy_to_device(base + r.offset, r.host, r.bytes);
  }
  for (const Range& r : l.ranges) bytes_copied_ += r.bytes;
  copy_stream_.copy_to_device(slot.pointers.data(), slot.host_pointers, pointer_bytes);
  slot.copied.record(copy_stream_);
  slot.ever_copied = true;
  slot.table = l.shape;
  const auto* table = static_cast<const void* const*>(slot.pointers.data());
  slot.table.gate = table;
  slot.table.up = table + count;
  slot.table.down = table + 2 * count;
  if (l.offsets[static_cast<size_t>(3 * count)] != kNone) {
    slot.table.gate_scales = reinterpret_cast<const float* const*>(table + 3 * count);
    slot.table.up_scales = reinterpret_cast<const float* const*>(table + 4 * count);
    slot.table.down_scales = reinterpret_cast<const float* const*>(table + 5 * count);
  }
  slot.holds = &experts;
  compute.make_current();
  return true;
}

const ExpertTable* ExpertStreamer::acquire(const ExpertWeights& experts, Stream& compute) {
  int index = slots_[0].holds == &experts ? 0 : slots_[1].holds == &experts ? 1 : -1;
  if (index < 0) {
    index = 1 - last_;
    if (!fill(slots_[static_cast<size_t>(index)], experts, compute)) return nullptr;
  }
  last_ = index;
  Slot& slot = slots_[static_cast<size_t>(index)];
  slot.copied.wait_on(compute);
  return &slot.table;
}

void ExpertStreamer::release(Stream& compute) {
  Slot& slot = slots_[static_cast<size_t>(last_)];
  slot.released.record(compute);
  slot.ever_released = true;
}

void ExpertStreamer::prefetch(const ExpertWeights& next, Stream& compute) {
  const int other = 1 - last_;
  if (slots_[static_cast<size_t>(last_)].holds == &next || slots_[static_cast<size_t>(other)].holds == &next) return;
  fill(slots_[static_cast<size_t>(other)], next, compute);
}

}  // namespace tandem::cuda
