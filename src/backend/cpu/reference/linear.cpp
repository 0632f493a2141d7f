#include "tandem/backend/cpu/reference/linear.hpp"

#include <Eigen/Core>
#include <algorithm>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem {
namespace {

constexpr int64_t kTileRows = 16;
constexpr int64_t kFp8Block = 128;

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// `scratch`: room for kTileRows dequantised rows.
void linear_tile(const LinearWeight& w, int64_t o0, int64_t o1, const float* x, int64_t rows, float* y,
                 float* scratch) {
  const int64_t in = w.in_features(), out = w.out_features();
  dequantize_weight_rows(w, o0, o1, scratch);
  Eigen::Map<const RowMajor> wt(scratch, o1 - o0, in);
  Eigen::Map<const RowMajor> xm(x, rows, in);
  Eigen::Map<RowMajor, 0, Eigen::OuterStride<>> ym(y + o0, rows, o1 - o0, Eigen::OuterStride<>(out));
  ym.noalias() = xm * wt.transpose();
  if (!w.bias.empty()) {
    // Biases are tiny; dequantise the slice each time rather than caching state here.
    float bias[kTileRows];
    const auto& traits = dtype_traits(w.bias.dtype);
    if (traits.block_elems == 1) {
      for (int64_t o = o0; o < o1; ++o)
        dequantize_row(w.bias.dtype, static_cast<const uint8_t*>(w.bias.data) + o * traits.block_bytes,
                       &bias[o - o0], 1);
    } else {
      std::vector<float> all = dequantize_to_vector(w.bias);
      std::copy(all.begin() + o0, all.begin() + o1, bias);
    }
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t o = o0; o < o1; ++o) y[t * out + o] += bias[o - o0];
  }
}

}  // namespace

void dequantize_weight_rows(const LinearWeight& w, int64_t row_begin, int64_t row_end, float* dst) {
  const int64_t in = w.in_features();
  for (int64_t o = row_begin; o < row_end; ++o) {
    float* row = dst + (o - row_begin) * in;
    dequantize_row(w.weight.dtype, w.weight.row_ptr(o), row, in);
    if (!w.scale_inv.empty()) {
      const int64_t scale_cols = w.scale_inv.shape.back();
      const int64_t scale_row = o / kFp8Block;
      for (int64_t c = 0; c < scale_cols; ++c) {
        float scale;
        dequantize_row(w.scale_inv.dtype,
                       w.scale_inv.row_ptr(scale_row) + c * dtype_traits(w.scale_inv.dtype).block_bytes,
                       &scale, 1);
        const int64_t end = std::min(in, (c + 1) * kFp8Block);
        for (int64_t i = c * kFp8Block; i < end; ++i) row[i] *= scale;
      }
    }
  }
}

void linear(ThreadPool* pool, const LinearWeight& w, const float* x, int64_t rows, float* y) {
  const int64_t out = w.out_features();
  const int64_t tiles = (out + kTileRows - 1) / kTileRows;
  const auto tile_floats = static_cast<size_t>(kTileRows * w.in_features());
  auto run = [&](int64_t begin, int64_t end, float* scratch) {
    for (int64_t tile = begin; tile < end; ++tile)
      linear_tile(w, tile * kTileRows, std::min(out, (tile + 1) * kTileRows), x, rows, y, scratch);
  };
  if (pool) {
    // Each worker dequantises into its own scratch, owned by the pool (no per-call allocation).
    pool->parallel_for(tiles, [&](int64_t begin, int64_t end, int worker) {
      run(begin, end, pool->scratch(worker, 0, tile_floats));
    });
  } else {
    std::vector<float> scratch(tile_floats);
    run(0, tiles, scratch.data());
  }
}

std::vector<float> dequantize_to_vector(const TensorView& view) {
  if (view.empty()) return {};
  const int64_t elems = view.shape.elements();
  std::vector<float> out(static_cast<size_t>(elems));
  const int64_t width = view.shape.back();
  for (int64_t r = 0; r < view.shape.rows(); ++r)
    dequantize_row(view.dtype, view.row_ptr(r), out.data() + r * width, width);
  return out;
}

void embedding_lookup(const TensorView& table, const int32_t* ids, int64_t count, float* out) {
  const int64_t width = table.shape.back();
  for (int64_t t = 0; t < count; ++t)
    dequantize_row(table.dtype, table.row_ptr(ids[t]), out + t * width, width);
}

}  // namespace tandem
