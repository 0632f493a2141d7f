#include "backend/cpu/repacked_weights.hpp"

#include <fmt/format.h>

#include <new>

#include "backend/cpu/kernels/int8_strips.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"

namespace tandem {

int64_t RepackedWeights::bytes_for(const kernels::KernelTable& table, const LinearWeight& w, bool int8) {
  return strip_bytes_for(table, w) + (int8 ? int8_bytes_for(table, w) : 0);
}

int64_t RepackedWeights::strip_bytes_for(const kernels::KernelTable& table, const LinearWeight& w) {
  const TensorView& view = w.weight;
  if (view.empty() || view.shape.rank != 2 || view.device.kind != DeviceKind::cpu || !w.scale_inv.empty()) return 0;
  const auto kind = kernels::weight_kind_for(view.dtype);
  if (!kind || !table.repacked[static_cast<int>(*kind)]) return 0;
  return kernels::repacked_bytes(*kind, w.out_features(), w.in_features());
}

int64_t RepackedWeights::int8_bytes_for(const kernels::KernelTable& table, const LinearWeight& w) {
  const TensorView& view = w.weight;
  if (!table.int8_wide || view.empty() || view.shape.rank != 2 || view.device.kind != DeviceKind::cpu ||
      !w.scale_inv.empty())
    return 0;
  const auto kind = kernels::weight_kind_for(view.dtype);
  if (!kind || kernels::act_format(*kind) != kernels::ActFormat::q8k) return 0;
  return kernels::int8_strips_bytes(view.dtype, w.out_features(), w.in_features());
}

template <class Fill>
void RepackedWeights::add_copy(Copies& copies, const LinearWeight& w, int64_t bytes, ThreadPool& pool,
                               const char* what, const Fill& fill) {
  const TensorView& view = w.weight;
  const int64_t rows = w.out_features(), in = w.in_features();
  const WeightFingerprint source = fingerprint_of(view);
  std::lock_guard lock(mutex_);
  if (auto it = copies.find(view.data); it != copies.end()) {
    if (it->second.source == source) return;
    bytes_ -= it->second.bytes;
    copies.erase(it);
  }
  Copy copy;
  copy.source = source;
  copy.nbytes = view.nbytes;
  copy.bytes = bytes;
  try {
    copy.storage =
        std::make_unique_for_overwrite<uint8_t[]>(static_cast<size_t>(copy.bytes + kernels::kRepackedAlign));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory,
                fmt::format("cannot allocate {} bytes of host memory for {} of a {}×{} weight", copy.bytes, what,
                            rows, in));
  }
  const auto address = reinterpret_cast<uintptr_t>(copy.storage.get());
  copy.strips = copy.storage.get() +
                (kernels::kRepackedAlign - address % kernels::kRepackedAlign) % kernels::kRepackedAlign;
  const int64_t strips = (rows + kernels::kTileRows - 1) / kernels::kTileRows;
  uint8_t* out = copy.strips;
  pool.parallel_for(strips, [&](int64_t begin, int64_t end, int) { fill(begin, end, out); });
  bytes_ += copy.bytes;
  copies.emplace(view.data, std::move(copy));
}

bool RepackedWeights::add(const kernels::KernelTable& table, const LinearWeight& w, ThreadPool& pool, bool int8) {
  const TensorView& view = w.weight;
  const int64_t rows = w.out_features(), in = w.in_features();
  const auto* rows_data = static_cast<const uint8_t*>(view.data);
  const auto row_stride = static_cast<int64_t>(view.row_stride_bytes());
  bool held = false;
  if (const int64_t bytes = strip_bytes_for(table, w); bytes > 0) {
    const auto kind = *kernels::weight_kind_for(view.dtype);
    add_copy(copies_, w, bytes, pool, "a repacked copy (TANDEM_CPU_REPACK=0 keeps the weights in place)",
             [&](int64_t begin, int64_t end, uint8_t* out) {
      kernels::repack_strips(kind, rows_data, row_stride, rows, in, begin, end, out);
    });
    held = true;
  }
  if (const int64_t bytes = int8 ? int8_bytes_for(table, w) : 0; bytes > 0) {
    add_copy(int8_copies_, w, bytes, pool, "an int8 copy (TANDEM_CPU_INT8=0 makes none)",
             [&](int64_t begin, int64_t end, uint8_t* out) {
      kernels::requantise_int8_strips(view.dtype, rows_data, row_stride, rows, in, begin, end, out);
    });
    held = true;
  }
  return held;
}

const uint8_t* RepackedWeights::find(const LinearWeight& w) const { return find_both(w).strips; }

RepackedWeights::Found RepackedWeights::find_both(const LinearWeight& w) const {
  std::lock_guard lock(mutex_);
  return {find_in(copies_, w), find_in(int8_copies_, w)};
}

const uint8_t* RepackedWeights::find_in(const Copies& copies, const LinearWeight& w) const {
  if (copies.empty()) return nullptr;
  const auto it = copies.find(w.weight.data);
  if (it == copies.end()) return nullptr;
  const Copy& copy = it->second;
  const TensorView& view = w.weight;
  const bool same = view.shape.rank == 2 && view.dtype == copy.source.dtype &&
                    view.shape[0] == copy.source.rows && view.shape[1] == copy.source.cols &&
                    view.nbytes == copy.nbytes;
  return same ? copy.strips : nullptr;
}

int64_t RepackedWeights::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

}  // namespace tandem
