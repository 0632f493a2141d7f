#pragma once
// Work items [0, n) cut into one contiguous part per thread: a thread takes items from the front of
// its own part, then steals from the back of the other parts. Each thread so streams one long
// contiguous stretch of weights forwards, and a thief another backwards (a DRAM prefetcher loses
// most of its use when threads take neighbouring items in turn: 2.7x slower on the dev machine),
// while a thread that starts late or runs slow delays only the item it holds. A part is one 64-bit
// word (front and back cursors), so a claim is one uncontended compare-and-swap.
// reset() between uses, from one thread while no other takes items.
#include <atomic>
#include <cstdint>
#include <memory>

namespace tandem {

class PartitionedItems {
 public:
  explicit PartitionedItems(int parts)
      : parts_(parts < 1 ? 1 : parts), cursors_(std::make_unique<Part[]>(static_cast<size_t>(parts_))) {}

  int parts() const { return parts_; }

  // items < 2^31.
  void reset(int64_t items) {
    for (int p = 0; p < parts_; ++p) {
      const auto front = static_cast<uint32_t>(items * p / parts_), back = static_cast<uint32_t>(items * (p + 1) / parts_);
      cursors_[p].range.store(pack(front, back), std::memory_order_relaxed);
    }
  }

  // The next item for the thread owning part `own` (< parts()); -1 once every part is taken.
  // `victim` is the thread's own state between calls: start it at `own`.
  int64_t take(int own, int& victim) {
    if (victim == own) {
      if (const int64_t i = claim(own, true); i >= 0) return i;
      victim = next_part(own);
    }
    for (; victim != own; victim = next_part(victim))
      if (const int64_t i = claim(victim, false); i >= 0) return i;
    return -1;
  }

 private:
  static uint64_t pack(uint32_t front, uint32_t back) { return uint64_t{front} | uint64_t{back} << 32; }
  int next_part(int p) const { return p + 1 == parts_ ? 0 : p + 1; }

  int64_t claim(int part, bool from_front) {
    std::atomic<uint64_t>& range = cursors_[part].range;
    uint64_t r = range.load(std::memory_order_relaxed);
    for (;;) {
      const auto front = static_cast<uint32_t>(r), back = static_cast<uint32_t>(r >> 32);
      if (front >= back) return -1;
      const uint64_t taken = from_front ? pack(front + 1, back) : pack(front, back - 1);
      if (range.compare_exchange_weak(r, taken, std::memory_order_relaxed)) return from_front ? front : back - 1;
    }
  }

  struct alignas(64) Part {
    std::atomic<uint64_t> range{0};  // front cursor in the low half, back cursor (exclusive) in the high half
  };
  int parts_;
  std::unique_ptr<Part[]> cursors_;
};

}  // namespace tandem
