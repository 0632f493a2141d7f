#pragma once
// The pieces every fast CPU operator is built from: quantise activation rows into the format a
// weight type's kernel reads, and compute a tile of output rows for a run of tokens, four tokens
// per kernel call so each weight block is unpacked once for four tokens.
#include <cstdint>

#include "backend/cpu/kernels/kernel_table.hpp"
#include "tandem/model/weights.hpp"

namespace tandem::kernels {

// Activation rows in a kernel's format: row t at data + t·stride bytes.
struct ActRows {
  const uint8_t* data = nullptr;
  int64_t stride = 0;
};

// FP8 weights with more 128-column scale blocks than this (in_features > 65,536) take the
// reference path.
constexpr int64_t kMaxFp8ScaleColumns = 512;

// Bytes one row of `in` values takes in `format`.
int64_t act_row_bytes(ActFormat format, int64_t in) noexcept;

// Quantises rows [row_begin, row_end) of x (row stride x_stride floats) into dst (row stride
// act_row_bytes) with the table's quantiser. For ActFormat::f32 it copies nothing: use the floats directly.
void quantize_rows(const KernelTable& table, ActFormat format, const float* x, int64_t x_stride, int64_t in, int64_t row_begin,
                   int64_t row_end, uint8_t* dst);

// y[t·y_stride + (o − o0)] = Σ_i W[o, i]·x_t[i] (+ bias[o]) for t < tokens, o in [o0, o1). `y`
// points at the tile's first column; `bias`: the whole float bias or nullptr. With a workspace of
// matmul_tile_workspace_bytes (the calling thread's own) and at least kTileMinTokens tokens, a type
// with a tile kernel in `table` takes it; otherwise (or with workspace == nullptr) the dot kernels.
// `repacked`: w repacked at preparation (strip_repack.hpp) or nullptr; with it, a kind with a
// repacked kernel in `table`, and o0 on a strip's first row, every token count reads the repacked
// strips instead of w's rows. `int8`: w's int8 strips (int8_strips.hpp) or nullptr; with it, the
// table's int8 kernel, Q8K activations and o0 on a strip's first row, whole runs of kTileMinTokens
// tokens read them (the requantised weights: not the stored type's bits) and the rest as above.
void matmul_tile(const KernelTable& table, const LinearWeight& w, WeightKind kind, ActRows x, int64_t tokens,
                 int64_t o0, int64_t o1, const float* bias, float* y, int64_t y_stride, void* workspace,
                 const uint8_t* repacked = nullptr, const uint8_t* int8 = nullptr);

// Bytes of workspace matmul_tile may use for this weight type and width (0: none), alignment slack included.
constexpr int64_t kTileWorkspaceAlign = 64;
int64_t matmul_tile_workspace_bytes(const KernelTable& table, WeightKind kind, int64_t in) noexcept;

}  // namespace tandem::kernels
