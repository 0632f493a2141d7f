#pragma once
// A non-owning view of a dense, row-major tensor in its stored type. Shapes are outermost first
// (as PyTorch/HF write them): a linear weight is {out_features, in_features}; GGUF's reversed
// `ne` order is turned around by the reader. The innermost dimension is blocked for quantised
// types, so a view is always contiguous and rows are `row_bytes(dtype, shape.back())` apart.
#include <array>
#include <cstdint>
#include <string>

#include "tandem/tensor/device.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem {

inline constexpr int kMaxDims = 4;

struct Shape {
  std::array<int64_t, kMaxDims> dims{};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  int64_t operator[](int i) const { return dims[static_cast<size_t>(i)]; }
  int64_t back() const { return rank ? dims[static_cast<size_t>(rank - 1)] : 1; }
  int64_t elements() const;  // product of dims (1 for rank 0)
  int64_t rows() const { return back() ? elements() / back() : 0; }
  bool operator==(const Shape& o) const;
  std::string to_string() const;  // "[64, 512]"
};

struct TensorView {
  DType dtype = DType::f32;
  Shape shape;
  Device device = Device::cpu();
  const void* data = nullptr;
  uint64_t nbytes = 0;

  bool empty() const { return data == nullptr; }
  uint64_t row_stride_bytes() const;
  const uint8_t* row_ptr(int64_t row) const {
    return static_cast<const uint8_t*>(data) + static_cast<uint64_t>(row) * row_stride_bytes();
  }
  // The i-th slice along the outermost dimension (an expert of a merged expert tensor).
  TensorView slice_outer(int64_t i) const;
};

}  // namespace tandem
