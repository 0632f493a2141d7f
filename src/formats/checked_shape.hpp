#pragma once
// Shape arithmetic on untrusted dimensions: every product is checked for overflow before use.
#include <cstdint>
#include <optional>

#include "tandem/tensor/dtype.hpp"
#include "tandem/tensor/tensor_view.hpp"

namespace tandem::formats {

// Product of the dims, or nullopt when a dim is negative or the product overflows int64.
inline std::optional<int64_t> checked_elements(const Shape& shape) {
  int64_t n = 1;
  for (int i = 0; i < shape.rank; ++i) {
    const int64_t d = shape[i];
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

// Bytes of a tensor of `shape` stored as `type`: nullopt on overflow or when the innermost dim is
// not a whole number of blocks.
inline std::optional<uint64_t> checked_tensor_bytes(DType type, const Shape& shape) {
  const auto elems = checked_elements(shape);
  if (!elems) return std::nullopt;
  const auto row = row_bytes(type, shape.back());
  if (!row) return std::nullopt;
  const int64_t rows = shape.back() ? *elems / shape.back() : 0;
  uint64_t total = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(rows), *row, &total)) return std::nullopt;
  return total;
}

}  // namespace tandem::formats
