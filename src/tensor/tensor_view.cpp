#include "tandem/tensor/tensor_view.hpp"

#include <string>

namespace tandem {

Shape::Shape(std::initializer_list<int64_t> d) {
  for (int64_t v : d) {
    if (rank == kMaxDims) break;  // callers validate rank; never write past the array
    dims[static_cast<size_t>(rank++)] = v;
  }
}

int64_t Shape::elements() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i) {
    if (dims[static_cast<size_t>(i)] != o.dims[static_cast<size_t>(i)]) return false;
  }
  return true;
}

std::string Shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[static_cast<size_t>(i)]);
  }
  return s + "]";
}

uint64_t TensorView::row_stride_bytes() const { return row_bytes(dtype, shape.back()).value_or(0); }

TensorView TensorView::slice_outer(int64_t i) const {
  TensorView out = *this;
  if (shape.rank == 0) return out;
  out.shape.rank = shape.rank - 1;
  for (int d = 0; d + 1 < shape.rank; ++d) out.shape.dims[static_cast<size_t>(d)] = shape.dims[static_cast<size_t>(d + 1)];
  out.shape.dims[static_cast<size_t>(shape.rank - 1)] = 0;
  const int64_t inner_rows = shape.rank >= 2 ? out.shape.rows() : 1;
  const uint64_t stride = shape.rank >= 2 ? static_cast<uint64_t>(inner_rows) * row_stride_bytes()
                                          : static_cast<uint64_t>(dtype_traits(dtype).block_bytes);
  out.nbytes = stride;
  out.data = static_cast<const uint8_t*>(data) + static_cast<uint64_t>(i) * stride;
  return out;
}

}  // namespace tandem
