#include "backend/cpu/kernels/matmul_tile.hpp"

#include <algorithm>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/int8_strips.hpp"
#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "backend/cpu/kernels/tile_layout.hpp"

namespace tandem::kernels {
namespace {

constexpr int64_t kCacheLine = 64;

// Asks for the cache lines of data[begin, begin + bytes) ∩ data[0, size) to be brought into L2.
void prefetch_lines(const uint8_t* data, int64_t begin, int64_t bytes, int64_t size) {
  for (int64_t at = begin; at < std::min(begin + bytes, size); at += kCacheLine) __builtin_prefetch(data + at, 0, 2);
}

void add_bias(const float* bias, int64_t tokens, int64_t o0, int64_t o1, float* y, int64_t y_stride) {
  if (bias)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t o = o0; o < o1; ++o) y[t * y_stride + (o - o0)] += bias[o];
}

}  // namespace

int64_t tile_workspace_bytes(int64_t in) noexcept { return tile_workspace_size(in); }

int64_t matmul_tile_workspace_bytes(const KernelTable& table, WeightKind kind, int64_t in) noexcept {
  return table.tile[static_cast<int>(kind)] ? tile_workspace_bytes(in) + kTileWorkspaceAlign : 0;
}

int64_t act_row_bytes(ActFormat format, int64_t in) noexcept {
  return in / act_block_values(format) * act_block_bytes(format);
}

void quantize_rows(const KernelTable& table, ActFormat format, const float* x, int64_t x_stride, int64_t in, int64_t row_begin,
                   int64_t row_end, uint8_t* dst) {
  const int64_t bytes = act_row_bytes(format, in);
  for (int64_t r = row_begin; r < row_end; ++r) {
    if (format == ActFormat::q8k)
      table.quantize_q8k(x + r * x_stride, in, reinterpret_cast<ActQ8K*>(dst + r * bytes));
    else if (format == ActFormat::q8)
      table.quantize_q8(x + r * x_stride, in, reinterpret_cast<ActQ8*>(dst + r * bytes));
  }
}

void matmul_tile(const KernelTable& table, const LinearWeight& w, WeightKind kind, ActRows x, int64_t tokens,
                 int64_t o0, int64_t o1, const float* bias, float* y, int64_t y_stride, void* workspace,
                 const uint8_t* repacked, const uint8_t* int8) {
  if (int8 && table.int8_wide && o0 % kTileRows == 0 && tokens >= kTileMinTokens && act_format(kind) == ActFormat::q8k) {
    const int64_t wide = tokens / kTileMinTokens * kTileMinTokens, in = w.in_features();
    const int64_t strip_bytes = int8_strip_bytes(in);
    for (int64_t o = o0; o < o1; o += kTileRows)
      table.int8_wide(int8 + o / kTileRows * strip_bytes, static_cast<int>(std::min<int64_t>(kTileRows, o1 - o)), x.data,
                      x.stride, wide, in, y + (o - o0), y_stride, table.prefetch_bytes);
    add_bias(bias, wide, o0, o1, y, y_stride);
    if (tokens > wide)
      matmul_tile(table, w, kind, {x.data + wide * x.stride, x.stride}, tokens - wide, o0, o1, bias, y + wide * y_stride,
                  y_stride, workspace, repacked);
    return;
  }
  const RepackedFn narrow = table.repacked[static_cast<int>(kind)];
  if (repacked && narrow && o0 % kTileRows == 0) {
    // The wide kernel (AMX) takes whole runs of kTileMinTokens tokens — a partial tile costs it a
    // whole one — and the narrow kernel the rest; both give the same bits.
    const RepackedFn wide = table.repacked_wide[static_cast<int>(kind)];
    const int64_t wide_tokens = wide ? tokens / kTileMinTokens * kTileMinTokens : 0;
    const int64_t in = w.in_features(), strip_bytes = repacked_strip_bytes(kind, in);
    for (int64_t o = o0; o < o1; o += kTileRows) {
      const int n = static_cast<int>(std::min<int64_t>(kTileRows, o1 - o));
      const uint8_t* strip = repacked + o / kTileRows * strip_bytes;
      if (wide_tokens > 0) wide(strip, n, x.data, x.stride, wide_tokens, in, y + (o - o0), y_stride, table.prefetch_bytes);
      if (tokens > wide_tokens)
        narrow(strip, n, x.data + wide_tokens * x.stride, x.stride, tokens - wide_tokens, in,
               y + wide_tokens * y_stride + (o - o0), y_stride, table.prefetch_bytes);
    }
    add_bias(bias, tokens, o0, o1, y, y_stride);
    return;
  }
  const TileFn tile = table.tile[static_cast<int>(kind)];
  if (tile && workspace && tokens >= kTileMinTokens && w.scale_inv.empty()) {
    const auto address = reinterpret_cast<uintptr_t>(workspace);
    auto* aligned = static_cast<uint8_t*>(workspace) + ((kTileWorkspaceAlign - address % kTileWorkspaceAlign) % kTileWorkspaceAlign);
    const uint8_t* rows = static_cast<const uint8_t*>(w.weight.data);
    const auto row_stride = static_cast<int64_t>(w.weight.row_stride_bytes());
    for (int64_t o = o0; o < o1; o += kTileRows) {
      const int n = static_cast<int>(std::min<int64_t>(kTileRows, o1 - o));
      tile(rows + o * row_stride, row_stride, n, x.data, x.stride, tokens, w.in_features(), y + (o - o0), y_stride,
           aligned);
    }
    add_bias(bias, tokens, o0, o1, y, y_stride);
    return;
  }
  const DotFn dot = table.dot[static_cast<int>(kind)];
  const int64_t in = w.in_features();
  constexpr int64_t kFp8Rows = 128;
  const uint8_t* rows = static_cast<const uint8_t*>(w.weight.data);
  const auto row_stride = static_cast<int64_t>(w.weight.row_stride_bytes());
  // FP8 block scales copied out of the file: a float in a mapping need not be 4-byte aligned.
  float scales[kMaxFp8ScaleColumns];
  int64_t scale_row = -1;
  // Each row asks for the lines `prefetch_bytes` past its own, once, on the first pass over the
  // rows (later passes find them in cache), up to the matrix's end.
  const int64_t ahead = table.prefetch_bytes;
  const int64_t matrix_bytes = w.out_features() * row_stride;
  for (int64_t t0 = 0; t0 < tokens; t0 += kMaxTokens) {
    const int n = static_cast<int>(std::min<int64_t>(kMaxTokens, tokens - t0));
    const uint8_t* xt = x.data + t0 * x.stride;
    float* yt = y + t0 * y_stride;
    for (int64_t o = o0; o < o1; ++o) {
      if (!w.scale_inv.empty() && o / kFp8Rows != scale_row) {
        scale_row = o / kFp8Rows;
        std::memcpy(scales, w.scale_inv.row_ptr(scale_row),
                    static_cast<size_t>(w.scale_inv.shape.back()) * 4);
      }
      if (ahead > 0 && t0 == 0) prefetch_lines(rows, o * row_stride + ahead, row_stride, matrix_bytes);
      dot(rows + o * row_stride, xt, x.stride, n, in, w.scale_inv.empty() ? nullptr : scales, yt + (o - o0),
          y_stride);
    }
  }
  add_bias(bias, tokens, o0, o1, y, y_stride);
}

}  // namespace tandem::kernels
