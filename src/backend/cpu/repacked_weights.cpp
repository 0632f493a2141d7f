#include "backend/cpu/repacked_weights.hpp"

#include <fmt/format.h>

#include <new>

#include "backend/cpu/kernels/strip_repack.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"

namespace tandem {

int64_t RepackedWeights::bytes_for(const kernels::KernelTable& table, const LinearWeight& w) {
  const TensorView& view = w.weight;
  if (view.empty() || view.shape.rank != 2 || view.device.kind != DeviceKind::cpu || !w.scale_inv.empty()) return 0;
  const auto kind = kernels::weight_kind_for(view.dtype);
  if (!kind || !table.repacked[static_cast<int>(*kind)]) return 0;
  return kernels::repacked_bytes(*kind, w.out_features(), w.in_features());
}

bool RepackedWeights::add(const kernels::KernelTable& table, const LinearWeight& w, ThreadPool& pool) {
  const int64_t bytes = bytes_for(table, w);
  if (bytes == 0) return false;
  const TensorView& view = w.weight;
  const auto kind = *kernels::weight_kind_for(view.dtype);
  const int64_t rows = w.out_features(), in = w.in_features();
  const WeightFingerprint source = fingerprint_of(view);
  std::lock_guard lock(mutex_);
  if (auto it = copies_.find(view.data); it != copies_.end()) {
    if (it->second.source == source) return true;
    bytes_ -= it->second.bytes;
    copies_.erase(it);
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
                fmt::format("cannot allocate {} bytes of host memory for a repacked copy of a {}×{} weight "
                            "(TANDEM_CPU_REPACK=0 keeps the weights in place)",
                            copy.bytes, rows, in));
  }
  const auto address = reinterpret_cast<uintptr_t>(copy.storage.get());
  copy.strips = copy.storage.get() +
                (kernels::kRepackedAlign - address % kernels::kRepackedAlign) % kernels::kRepackedAlign;
  const int64_t strips = (rows + kernels::kTileRows - 1) / kernels::kTileRows;
  const auto* rows_data = static_cast<const uint8_t*>(view.data);
  const auto row_stride = static_cast<int64_t>(view.row_stride_bytes());
  uint8_t* out = copy.strips;
  pool.parallel_for(strips, [&](int64_t begin, int64_t end, int) {
    kernels::repack_strips(kind, rows_data, row_stride, rows, in, begin, end, out);
  });
  bytes_ += copy.bytes;
  copies_.emplace(view.data, std::move(copy));
  return true;
}

const uint8_t* RepackedWeights::find(const LinearWeight& w) const {
  std::lock_guard lock(mutex_);
  if (copies_.empty()) return nullptr;
  const auto it = copies_.find(w.weight.data);
  if (it == copies_.end()) return nullptr;
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
