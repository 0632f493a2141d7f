#pragma once
// The CUDA backend's working-memory arithmetic, shared by the backend (which allocates by it) and the
// placement planner (which counts it against a VRAM budget on machines without a GPU too): when
// linears and routed experts go through cuBLAS, and the scratch layout of the experts' cuBLAS path.
// Host arithmetic only.
#include <algorithm>
#include <cstdint>

namespace tandem {

// Prefill batches of this many tokens or more multiply dense linears through cuBLAS (bf16), the weight
// dequantised to bf16 into working memory once per call — weights of at most this many values (the
// output matrix of a large vocabulary stays on the tiles).
inline constexpr int64_t kCudaBlasMinRows = 256;
inline constexpr int64_t kCudaBlasMaxWeightValues = int64_t{64} << 20;

// Routed experts take cuBLAS from this many (token, expert) pairs per expert on average: on the H200
// (bench_cuda_kernels, Qwen3-30B-A3B's layer) the grouped tiles and it were even at 32 (1.70 vs
// 1.63 ms), it was 3.2× faster at 256. Its experts' bf16 copies are made a chunk at a time, at most
// this many bytes (at least one expert), into two buffers: the next chunk is dequantised (memory-bound)
// while cuBLAS multiplies the one before (compute-bound).
inline constexpr int64_t kCudaBlasMoePairsPerExpert = 64;
inline constexpr int64_t kCudaBlasMoeWeightChunkBytes = int64_t{128} << 20;
inline constexpr int64_t kCudaBlasMoeWeightBuffers = 2;
// Each expert's grouped rows start a multiple of this apart, so experts with the same padded count
// form one batched GEMM (the pad rows are computed and never read).
inline constexpr int64_t kCudaMoeRowAlign = 32;

// Byte offsets of the experts' cuBLAS scratch: pair positions and hit flags, the batched GEMMs'
// pointers, the gathered bf16 rows, gate|up float outputs, bf16 activations, float down outputs, then
// kCudaBlasMoeWeightBuffers chunks of dequantised experts (`w`, each `chunk_bytes` apart).
struct CudaMoeBlasLayout {
  int64_t rows = 0;  // grouped rows, pads included, at most
  int64_t index = 0, pointers = 0, xg = 0, gu = 0, act = 0, y = 0, w = 0, total = 0;
  int64_t chunk_experts = 0, chunk_bytes = 0;
};

inline CudaMoeBlasLayout cuda_moe_blas_layout(int64_t experts, int64_t intermediate, int64_t tokens, int64_t hidden,
                                              int64_t top_k, int64_t chunk_bytes = kCudaBlasMoeWeightChunkBytes) {
  const auto align256 = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t pairs = tokens * top_k;
  const int64_t per_expert = 3 * intermediate * hidden * 2;
  CudaMoeBlasLayout l;
  l.rows = pairs + experts * (kCudaMoeRowAlign - 1);
  l.chunk_experts = std::clamp<int64_t>(chunk_bytes / std::max<int64_t>(per_expert, 1), 1, std::max<int64_t>(experts, 1));
  l.index = 0;
  l.pointers = l.index + align256((pairs + experts) * 4);
  l.xg = l.pointers + align256(6 * experts * static_cast<int64_t>(sizeof(void*)));
  l.gu = l.xg + align256(l.rows * hidden * 2);
  l.act = l.gu + align256(l.rows * 2 * intermediate * 4);
  l.y = l.act + align256(l.rows * intermediate * 2);
  l.w = l.y + align256(l.rows * hidden * 4);
  l.chunk_bytes = align256(l.chunk_experts * per_expert);
  l.total = l.w + kCudaBlasMoeWeightBuffers * l.chunk_bytes;
  return l;
}

// The grouped tiles' scratch (moe_grouped.cu), below the cuBLAS path's pair count: int bookkeeping —
// per-expert counts and offsets, the pairs' order, the tile count and each tile's expert and first
// pair, with a tile slot per kCudaMoeGroupedTilePairs pairs plus a partial one per expert — then, 16-byte
// aligned, the gathered input rows, the activations and the per-pair outputs in float32.
inline constexpr int64_t kCudaMoeGroupedTilePairs = 8;

struct CudaMoeGroupedLayout {
  int64_t tile_slots = 0, ints = 0, floats_offset = 0, total = 0;  // offsets and total in bytes
};

inline CudaMoeGroupedLayout cuda_moe_grouped_layout(int64_t experts, int64_t intermediate, int64_t tokens,
                                                    int64_t hidden, int64_t top_k) {
  const int64_t pairs = tokens * top_k;
  CudaMoeGroupedLayout l;
  l.tile_slots = pairs / kCudaMoeGroupedTilePairs + experts + 1;
  l.ints = (2 * experts + 1) + pairs + 1 + 2 * l.tile_slots;
  l.floats_offset = (l.ints + 4) / 4 * 16;
  l.total = l.floats_offset + (pairs * hidden + pairs * intermediate + pairs * hidden) * 4;
  return l;
}

}  // namespace tandem
