#pragma once
// Row-times-tokens dot products against weights in their stored type. One call: one weight row
// (`in` values) against up to kMaxTokens activation rows:
//   y[t * y_stride] = Σ_i W[i] · x_t[i]   for t < tokens
// where x_t is the t-th activation row (`x + t * x_stride` bytes), in the format the weight type
// asks for (ActFormat). FP8 rows take `block_scales`: one float per 128 columns (the row's
// scale_inv row); other types ignore it.
//
// Each kernel exists at every IsaLevel; the scalar one is the reference for the others. Plain
// declarations only: the ISA files that define them are built with their own -m flags.
#include <cstdint>

namespace tandem::kernels {

constexpr int kMaxTokens = 4;

enum class ActFormat : uint8_t { f32, q8k, q8 };

// The kernels a weight type has (its index in a KernelTable).
enum class WeightKind : uint8_t {
  q4_k, q5_k, q6_k, iq4_xs, q8_0, q4_0, q5_0, q4_1, q5_1, iq4_nl, f32, f16, bf16, f8_e4m3, count
};

using DotFn = void (*)(const uint8_t* w, const void* x, int64_t x_stride, int tokens, int64_t in,
                       const float* block_scales, float* y, int64_t y_stride);

// Tile kernels (AVX-512 VNNI, AMX): a strip of `rows` <= kTileRows weight rows (row i at w + i·row_stride) against
// `tokens` activation rows, y[t·y_stride + i] = Σ_k W[i, k]·x_t[k], with the integer sums of the
// scalar dot kernel. `workspace`: tile_workspace_bytes(in) bytes, 64-byte aligned, owned by the
// calling thread. nullptr in a table: the type has none (matmul_tile uses the dot kernels).
constexpr int kTileRows = 16;
// Fewer tokens per call: the dot kernels are faster. Packing a strip costs more than the 4-token
// dot passes it saves below ~16 tokens once the rows come from memory rather than L2 (dev machine,
// one thread, 65,536 rows x 2048: Q4_K at 8 tokens 12.7 ms dot vs 21.4 ms tile, at 16 26.1 vs 27.2,
// at 32 47.3 vs 38.7; Q6_K 15.3 vs 24.9, 31.1 vs 28.8, 54.3 vs 37.0) — the sizes of a decode step
// batching 8-31 sequences.
constexpr int64_t kTileMinTokens = 16;
using TileFn = void (*)(const uint8_t* w, int64_t row_stride, int rows, const void* x, int64_t x_stride,
                        int64_t tokens, int64_t in, float* y, int64_t y_stride, uint8_t* workspace);
int64_t tile_workspace_bytes(int64_t in) noexcept;
// Kernels over weights repacked at preparation (strip_repack.hpp): the strip of `rows` <= kTileRows
// rows at `strip` against any number of tokens, y as TileFn's, the integer sums of the scalar dot
// kernel. No workspace: the strip is already in the order the kernel reads. `prefetch_bytes`: how
// far past the block it reads the kernel asks for the strip's bytes (0: not at all).
using RepackedFn = void (*)(const uint8_t* strip, int rows, const void* x, int64_t x_stride, int64_t tokens,
                            int64_t in, float* y, int64_t y_stride, int64_t prefetch_bytes);

// How far ahead of the row a dot kernel reads matmul_tile asks the caches for the weight bytes
// (software prefetch into L2): on the GPU machine's Xeon the hardware prefetchers alone kept too few
// lines in flight — one core streamed Q4_K experts for one token at 6.0 GB/s, 9.2 with it; 16 cores
// 63 → 85 GB/s (docs/PERF.md, "Software prefetch"). 0 turns it off; TANDEM_CPU_PREFETCH=BYTES sets it.
constexpr int64_t kDefaultPrefetchBytes = 4096;

// Activation rows into the dot kernels' blocks (activation_blocks.hpp); every level gives the
// scalar definitions' bytes.
struct ActQ8K;
struct ActQ8;
using QuantizeQ8KFn = void (*)(const float* x, int64_t n, ActQ8K* out) noexcept;
using QuantizeQ8Fn = void (*)(const float* x, int64_t n, ActQ8* out) noexcept;
// out[i] = SiLU(gate[i]) · up[i] (out may be gate or up).
using SiluMulFn = void (*)(const float* gate, const float* up, int64_t n, float* out) noexcept;

struct KernelTable {
  DotFn dot[static_cast<int>(WeightKind::count)];
  TileFn tile[static_cast<int>(WeightKind::count)];
  RepackedFn repacked[static_cast<int>(WeightKind::count)];
  // The same for whole runs of kTileMinTokens tokens where the level has a faster kernel for them
  // (AMX; matmul_tile gives `repacked` the rest); nullptr: `repacked` serves every count.
  RepackedFn repacked_wide[static_cast<int>(WeightKind::count)];
  // Strips requantised to int8 at preparation (int8_strips.hpp), any stored type, whole runs of
  // kTileMinTokens tokens on Q8K activations (AMX-INT8); nullptr where the level has none.
  RepackedFn int8_wide = nullptr;
  QuantizeQ8KFn quantize_q8k = nullptr;
  QuantizeQ8Fn quantize_q8 = nullptr;
  SiluMulFn silu_mul = nullptr;
  int64_t prefetch_bytes = kDefaultPrefetchBytes;
};

namespace scalar {
void fill_kernels(KernelTable& t) noexcept;
}
namespace avx2 {
void fill_kernels(KernelTable& t) noexcept;
void fill_quantize_kernels(KernelTable& t) noexcept;
}
namespace avx512 {
void fill_kernels(KernelTable& t) noexcept;
void fill_quantize_kernels(KernelTable& t) noexcept;
void fill_activation_kernels(KernelTable& t) noexcept;  // silu_mul
void fill_tile_kernels(KernelTable& t) noexcept;  // vpdpbusd on packed 16-row strips, and on repacked ones
}
namespace amx {
void fill_kernels(KernelTable& t) noexcept;           // the tile kernels; needs AMX-TILE/INT8 enabled
void fill_emulated_kernels(KernelTable& t) noexcept;  // the same with each tile instruction emulated
}

}  // namespace tandem::kernels
