#pragma once
// The per-thread workspace of the tile kernels (one strip of kTileRows weight rows), laid out the same
// way by matmul_tile (which sizes it) and the AMX file (which fills it). Internal linkage on purpose,
// as in quant_layouts.hpp: included by files built for different ISAs.
#include <cstdint>

namespace tandem::kernels {
namespace {

// Per 256-value block: the strip's quants as unsigned bytes in the B-tile order [value / 4][row][4]
// (4,096 bytes), then per scale group g (16 at most) and row: the float scale applied to the group's
// integer dot product and the one applied to the activation's group sum (2 × 1,024 bytes); after all
// blocks, one int32 16×16 result tile per group (16 × 1,024 bytes).
constexpr int64_t kTilePackedBlockBytes = 4096;
constexpr int64_t kTileScaleBlockBytes = 2048;
constexpr int64_t kTileResultBytes = 16 * 1024;

inline int64_t tile_packed_offset(int64_t) { return 0; }
inline int64_t tile_scales_offset(int64_t in) { return in / 256 * kTilePackedBlockBytes; }
inline int64_t tile_results_offset(int64_t in) { return in / 256 * (kTilePackedBlockBytes + kTileScaleBlockBytes); }
inline int64_t tile_workspace_size(int64_t in) { return tile_results_offset(in) + kTileResultBytes; }

}  // namespace
}  // namespace tandem::kernels
