#pragma once
// The CPU backend's copies of weight matrices repacked into 16-row strips at preparation
// (kernels/strip_repack.hpp), by the weight's address: made once by add (at load, from the file's
// mapping, which stays unchanged), looked up by every operator call. The copy replaces the mapped
// rows for the kernels that read it, so the mapping's pages are read once and can then leave the
// page cache — find therefore matches by address, type, shape and byte size only and never reads the
// weight (a lookup must not fault an evicted page back in); add compares the contents' fingerprint,
// so preparing a changed weight at the same address replaces its copy. Kept only where the kernel
// table has a repacked kernel for the type.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/weight_fingerprint.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

class RepackedWeights {
 public:
  // Repacks `w` (its strips split over the pool) if the table has a repacked kernel for its type
  // and it is not held already; returns whether a copy is held now.
  // With `int8` (and the table's int8 kernel, and a requantisable weight on Q8K activations) also
  // its int8 strips (kernels/int8_strips.hpp). Returns whether a copy is held.
  bool add(const kernels::KernelTable& table, const LinearWeight& w, ThreadPool& pool, bool int8);
  // The bytes add would copy for `w` with this table (0: it would not copy it).
  static int64_t bytes_for(const kernels::KernelTable& table, const LinearWeight& w, bool int8);
  // The repacked strips of `w`, or nullptr; with its int8 strips (or nullptr), in one lookup.
  const uint8_t* find(const LinearWeight& w) const;
  struct Found {
    const uint8_t* strips = nullptr;
    const uint8_t* int8 = nullptr;
  };
  Found find_both(const LinearWeight& w) const;
  int64_t bytes() const;

 private:
  struct Copy {
    WeightFingerprint source;
    uint64_t nbytes = 0;  // the weight view's
    std::unique_ptr<uint8_t[]> storage;
    uint8_t* strips = nullptr;  // storage aligned to kernels::kRepackedAlign
    int64_t bytes = 0;
  };
  using Copies = std::map<const void*, Copy>;
  // Makes (or keeps) copies[w]: `bytes` filled strip by strip by fill(begin, end, out) over the pool;
  // `what` names the copy and the switch that avoids it in an allocation failure's message.
  template <class Fill>
  void add_copy(Copies& copies, const LinearWeight& w, int64_t bytes, ThreadPool& pool, const char* what,
                const Fill& fill);
  const uint8_t* find_in(const Copies& copies, const LinearWeight& w) const;  // under mutex_
  static int64_t strip_bytes_for(const kernels::KernelTable& table, const LinearWeight& w);
  static int64_t int8_bytes_for(const kernels::KernelTable& table, const LinearWeight& w);

  mutable std::mutex mutex_;
  Copies copies_, int8_copies_;
  int64_t bytes_ = 0;
};

}  // namespace tandem
