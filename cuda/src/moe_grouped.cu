// The routed experts of many tokens (prefill) without the host: the (token, slot) pairs are grouped
// by expert on the device, then one launch covers gate+up of every hit expert and one its down
// projection, each block taking one expert's row range for a tile of its pairs, so an expert's rows
// are read once per tile instead of once per pair (moe.cu) and no launch is made per expert (the
// host-grouped path of cuda_backend.cpp). Tiles are 8 pairs on the CUDA cores, each pair's dot
// products in the linear kernel's order (equal to the pairwise path bit for bit), or, once the experts
// average kGroupedTensorCorePairs pairs, 64 pairs on the tensor cores (bf16 tiles, or 3xTF32 with
// float32 accuracy): a
// tensor-core tile dequantises its expert's rows whether it holds 64 pairs or 2, but far faster than
// the CUDA cores multiply them (on an H100, 2.1× at 4 pairs an expert), so the CUDA-core tiles keep
// only the fewest pairs an expert. The order of
// pairs within an expert (atomics) changes no value; the combine is weighted_sum_slots'.
#include "bf16_tiles.cuh"
#include "dequant.cuh"
#include "lane_blocks.cuh"
#include "launch.cuh"
#include "silu_glu.cuh"
#include "staged_rows.cuh"
#include "tandem/backend/cuda_working_memory.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tensor_core_tiles.cuh"

namespace tandem::cuda {

using detail::dispatch_weight_type;

namespace {

constexpr int kWarps = 8;  // output rows per block
constexpr int kTile = static_cast<int>(kCudaMoeGroupedTilePairs);  // pairs per block
using detail::kFp8Block;
namespace tc = detail::tc;
namespace bf16 = detail::bf16;

// The grouping, in one block: counts per expert, offsets, pairs in expert order (order[i] = pair),
// and the tiles (tile_expert[j], tile_begin[j] into order; tile count in tiles[0]). Pairs whose id
// is outside the table are left out (their slots are zeroed so the combine adds nothing).
__global__ void group_kernel(const int32_t* ids, int64_t pairs, int64_t experts, int64_t width, int32_t tile_pairs,
                             int32_t* counts, int32_t* order, int32_t* tiles, int32_t* tile_expert,
                             int32_t* tile_begin, float* slots) {
  for (int64_t e = threadIdx.x; e < 2 * experts + 1; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  int32_t* fill = counts + experts + 1;  // [experts]
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t e = ids[p];
    if (e >= 0 && e < experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t offset = 0, tile = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int32_t n = counts[e];
      fill[e] = offset;
      for (int32_t b = 0; b < n; b += tile_pairs) {
        tile_expert[tile] = static_cast<int32_t>(e);
        tile_begin[tile] = offset + b;
        ++tile;
      }
      counts[e] = offset;  // now the expert's first index in order
      offset += n;
    }
    counts[experts] = offset;
    tiles[0] = tile;
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t e = ids[p];
    if (e >= 0 && e < experts) {
      order[atomicAdd(&fill[e], 1)] = static_cast<int32_t>(p);
    } else {
      for (int64_t j = 0; j < width; ++j) slots[p * width + j] = 0.f;
    }
  }
}

// gathered[i] = x[token of order[i]].
__global__ void gather_pairs_kernel(const float* x, int64_t hidden, const int32_t* order, const int32_t* counts,
                                    int64_t experts, int64_t top_k, float* gathered) {
  const int64_t i = blockIdx.x;
  if (i >= counts[experts]) return;
  const float* src = x + (order[i] / top_k) * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) gathered[i * hidden + j] = src[j];
}

// acc[r] += row o of w · x[r] for r < nrows (x rows `in` apart), in the linear kernels' order.
template <typename D>
__device__ __forceinline__ void tile_dot(const uint8_t* w, const float* scales, int64_t scale_cols, int64_t o,
                                         const float* x, int64_t in, int nrows, int lane, float* acc) {
  if constexpr (detail::LaneBlocks<D>::available) {
    if (scales == nullptr) {
      detail::lane_row_dot<detail::LaneBlocks<D>, kTile, 4>(w, 0, in / 256, 1, lane, x, in, nrows, acc);
      return;
    }
  }
  float v[32];
  for (int64_t c = lane; c < in / 32; c += 32) {
    D::chunk(w, c, v);
    if (scales != nullptr) {
      const float s = scales[(o / kFp8Block) * scale_cols + (c * 32) / kFp8Block];
#pragma unroll
      for (int j = 0; j < 32; ++j) v[j] = __fmul_rn(v[j], s);
    }
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
      if (r < nrows) {
        const float* xr = x + r * in + c * 32;
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < 32; ++j) a += v[j] * xr[j];
        acc[r] += a;
      }
    }
  }
  if constexpr (D::plain) {
    for (int64_t i = (in / 32) * 32 + lane; i < in; i += 32) {
      float wi = D::element(w, i);
      if (scales != nullptr) wi = __fmul_rn(wi, scales[(o / kFp8Block) * scale_cols + i / kFp8Block]);
      for (int r = 0; r < nrows; ++r) acc[r] += wi * x[r * in + i];
    }
  }
}

struct TileSpan {
  int32_t expert, begin, rows;
};
__device__ __forceinline__ bool tile_span(const int32_t* tiles, const int32_t* tile_expert, const int32_t* tile_begin,
                                          const int32_t* counts, TileSpan& s, int32_t tile_pairs = kTile) {
  const int32_t j = static_cast<int32_t>(blockIdx.y);
  if (j >= tiles[0]) return false;
  s.expert = tile_expert[j];
  s.begin = tile_begin[j];
  const int32_t end = counts[s.expert + 1];  // the next expert's first index, or the total
  s.rows = end - s.begin < tile_pairs ? end - s.begin : tile_pairs;
  return true;
}

// act[i, o] = silu(gate_e[o] · gathered[i]) · (up_e[o] · gathered[i]) for the tile's indices i.
template <typename D>
__global__ void grouped_gate_up_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                                       const int32_t* tile_begin, const int32_t* counts, const float* gathered,
                                       int64_t hidden, float* act) {
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s)) return;
  const int lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (o >= table.intermediate) return;
  const auto* gate = static_cast<const uint8_t*>(table.gate[s.expert]) + o * table.gate_row_bytes;
  const auto* up = static_cast<const uint8_t*>(table.up[s.expert]) + o * table.up_row_bytes;
  const int64_t cols = (hidden + kFp8Block - 1) / kFp8Block;
  const float* x = gathered + static_cast<int64_t>(s.begin) * hidden;
  float g[kTile] = {}, u[kTile] = {};
  tile_dot<D>(gate, table.gate_scales ? table.gate_scales[s.expert] : nullptr, cols, o, x, hidden, s.rows, lane, g);
  tile_dot<D>(up, table.up_scales ? table.up_scales[s.expert] : nullptr, cols, o, x, hidden, s.rows, lane, u);
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const float gs = detail::warp_sum(g[r]), us = detail::warp_sum(u[r]);
    if (lane == 0 && r < s.rows)
      act[(s.begin + r) * table.intermediate + o] = detail::silu_glu(gs, us);
  }
}

// slots[order[i], o] = down_e[o] · act[i] for the tile's indices i.
template <typename D>
__global__ void grouped_down_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                                    const int32_t* tile_begin, const int32_t* counts, const int32_t* order,
                                    const float* act, int64_t hidden, float* slots) {
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s)) return;
  const int lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (o >= hidden) return;
  const auto* down = static_cast<const uint8_t*>(table.down[s.expert]) + o * table.down_row_bytes;
  const int64_t cols = (table.intermediate + kFp8Block - 1) / kFp8Block;
  float acc[kTile] = {};
  tile_dot<D>(down, table.down_scales ? table.down_scales[s.expert] : nullptr, cols, o,
              act + static_cast<int64_t>(s.begin) * table.intermediate, table.intermediate, s.rows, lane, acc);
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const float d = detail::warp_sum(acc[r]);
    if (lane == 0 && r < s.rows) slots[static_cast<int64_t>(order[s.begin + r]) * hidden + o] = d;
  }
}

// The tensor-core versions (tensor_core_tiles.cuh), tiles of 64 pairs × 64 rows: gate and up of the
// tile's pairs together, then SiLU-GLU on the accumulators (the two fragments share their layout).
template <typename D>
__global__ void __launch_bounds__(tc::kThreads)
    grouped_gate_up_tc_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                              const int32_t* tile_begin, const int32_t* counts, const float* gathered, int64_t hidden,
                              float* act) {
  extern __shared__ __align__(128) float shared[];  // gate_up_shared_bytes: over 48 KiB, opted in
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s, tc::kRows)) return;
  float* xs = shared;
  float* gs = shared + tc::kOperandFloats;
  float* us = shared + 2 * tc::kOperandFloats;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * tc::kOut;
  const tc::WeightRows gate{static_cast<const uint8_t*>(table.gate[s.expert]), table.gate_row_bytes, table.intermediate,
                            hidden, table.gate_scales ? table.gate_scales[s.expert] : nullptr};
  const tc::WeightRows up{static_cast<const uint8_t*>(table.up[s.expert]), table.up_row_bytes, table.intermediate,
                          hidden, table.up_scales ? table.up_scales[s.expert] : nullptr};
  const float* a = gathered + static_cast<int64_t>(s.begin) * hidden;
  tc::FragC g[2][2], u[2][2], g_part[2][2], u_part[2][2];
  tc::zero(g);
  tc::zero(u);
  tc::zero(g_part);
  tc::zero(u_part);
  int steps = 0;
  for (int64_t k0 = 0; k0 < hidden; k0 += tc::kStep) {
    tc::stage_activations(a, hidden, s.rows, k0, xs);
    tc::stage_weights<D>(gate, o0, k0, gs);
    tc::stage_weights<D>(up, o0, k0, us);
    __syncthreads();
    tc::multiply_step(xs, gs, g_part);
    tc::multiply_step(xs, us, u_part);
    if (++steps == tc::kPromoteSteps) tc::promote(g_part, g), tc::promote(u_part, u), steps = 0;
    __syncthreads();
  }
  tc::promote(g_part, g);
  tc::promote(u_part, u);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < g[i][j].num_elements; ++e) {
        const float gv = g[i][j].x[e];
        g[i][j].x[e] = detail::silu_glu(gv, u[i][j].x[e]);
      }
  tc::store(g, shared);
  __syncthreads();
  for (int e = threadIdx.x; e < tc::kRows * tc::kOut; e += tc::kThreads) {
    const int m = e / tc::kOut, c = e % tc::kOut;
    const int64_t o = o0 + c;
    if (m < s.rows && o < table.intermediate)
      act[(static_cast<int64_t>(s.begin) + m) * table.intermediate + o] = shared[m * tc::kLdOut + c];
  }
}

template <typename D>
__global__ void __launch_bounds__(tc::kThreads)
    grouped_down_tc_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                           const int32_t* tile_begin, const int32_t* counts, const int32_t* order, const float* act,
                           int64_t hidden, float* slots) {
  constexpr int kShared = 2 * tc::kOperandFloats > tc::kResultFloats ? 2 * tc::kOperandFloats : tc::kResultFloats;
  __shared__ __align__(32) float shared[kShared];
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s, tc::kRows)) return;
  float* xs = shared;
  float* ws = shared + tc::kOperandFloats;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * tc::kOut;
  const tc::WeightRows down{static_cast<const uint8_t*>(table.down[s.expert]), table.down_row_bytes, hidden,
                            table.intermediate, table.down_scales ? table.down_scales[s.expert] : nullptr};
  const float* a = act + static_cast<int64_t>(s.begin) * table.intermediate;
  tc::FragC acc[2][2], part[2][2];
  tc::zero(acc);
  tc::zero(part);
  int steps = 0;
  for (int64_t k0 = 0; k0 < table.intermediate; k0 += tc::kStep) {
    tc::stage_activations(a, table.intermediate, s.rows, k0, xs);
    tc::stage_weights<D>(down, o0, k0, ws);
    __syncthreads();
    tc::multiply_step(xs, ws, part);
    if (++steps == tc::kPromoteSteps) tc::promote(part, acc), steps = 0;
    __syncthreads();
  }
  tc::promote(part, acc);
  tc::store(acc, shared);
  __syncthreads();
  for (int e = threadIdx.x; e < tc::kRows * tc::kOut; e += tc::kThreads) {
    const int m = e / tc::kOut, c = e % tc::kOut;
    const int64_t o = o0 + c;
    if (m < s.rows && o < hidden) slots[static_cast<int64_t>(order[s.begin + m]) * hidden + o] = shared[m * tc::kLdOut + c];
  }
}

// The bf16 tiles (bf16_tiles.cuh): gate+up take 64 rows of each matrix per block (the tile's 128
// weight rows), SiLU-GLU on the result tile; down takes 128 rows of its matrix.
struct GateUpRows {
  bf16::MatrixRows gate, up;
  __device__ __forceinline__ bf16::RowRef operator()(int n) const {
    return n < bf16::kCols / 2 ? gate(n) : up(n - bf16::kCols / 2);
  }
};

template <typename D>
__global__ void __launch_bounds__(bf16::kThreads)
    grouped_gate_up_bf16_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                                const int32_t* tile_begin, const int32_t* counts, const float* gathered,
                                int64_t hidden, float* act) {
  extern __shared__ __align__(128) float shared[];  // bf16::shared_bytes<D>(), opted in
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s, bf16::kRows)) return;
  constexpr int kHalf = bf16::kCols / 2;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kHalf;
  const GateUpRows row_of{
      {static_cast<const uint8_t*>(table.gate[s.expert]), table.gate_row_bytes, table.intermediate, hidden, o0,
       table.gate_scales ? table.gate_scales[s.expert] : nullptr},
      {static_cast<const uint8_t*>(table.up[s.expert]), table.up_row_bytes, table.intermediate, hidden, o0,
       table.up_scales ? table.up_scales[s.expert] : nullptr}};
  bf16::multiply_tile<D>(gathered + static_cast<int64_t>(s.begin) * hidden, hidden, s.rows, row_of, reinterpret_cast<unsigned char*>(shared));
  const float* out = shared;
  for (int e = threadIdx.x; e < bf16::kRows * kHalf; e += bf16::kThreads) {
    const int m = e / kHalf, c = e % kHalf;
    const int64_t o = o0 + c;
    if (m < s.rows && o < table.intermediate) {
      const float gv = out[m * bf16::kLdOut + c], uv = out[m * bf16::kLdOut + kHalf + c];
      act[(static_cast<int64_t>(s.begin) + m) * table.intermediate + o] = detail::silu_glu(gv, uv);
    }
  }
}

template <typename D>
__global__ void __launch_bounds__(bf16::kThreads)
    grouped_down_bf16_kernel(ExpertTable table, const int32_t* tiles, const int32_t* tile_expert,
                             const int32_t* tile_begin, const int32_t* counts, const int32_t* order, const float* act,
                             int64_t hidden, float* slots) {
  extern __shared__ __align__(128) float shared[];  // bf16::shared_bytes<D>(), opted in
  TileSpan s;
  if (!tile_span(tiles, tile_expert, tile_begin, counts, s, bf16::kRows)) return;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * bf16::kCols;
  const bf16::MatrixRows row_of{static_cast<const uint8_t*>(table.down[s.expert]), table.down_row_bytes, hidden,
                                table.intermediate, o0, table.down_scales ? table.down_scales[s.expert] : nullptr};
  bf16::multiply_tile<D>(act + static_cast<int64_t>(s.begin) * table.intermediate, table.intermediate, s.rows, row_of,
                         reinterpret_cast<unsigned char*>(shared));
  const float* out = shared;
  for (int e = threadIdx.x; e < bf16::kRows * bf16::kCols; e += bf16::kThreads) {
    const int m = e / bf16::kCols, c = e % bf16::kCols;
    const int64_t o = o0 + c;
    if (m < s.rows && o < hidden) slots[static_cast<int64_t>(order[s.begin + m]) * hidden + o] = out[m * bf16::kLdOut + c];
  }
}

constexpr size_t gate_up_shared_bytes() {
  return sizeof(float) * (3 * tc::kOperandFloats > tc::kResultFloats ? 3 * tc::kOperandFloats : tc::kResultFloats);
}

// Tiles of 64 pairs on the tensor cores (rows a multiple of tc::kStep wide), else 8 on the CUDA cores.
bool tensor_cores_fit(const ExpertTable& table, int64_t hidden) {
  return hidden % tc::kStep == 0 && table.intermediate % tc::kStep == 0;
}
bool use_tensor_cores(const ExpertTable& table, int64_t pairs, int64_t hidden, GroupedTiles tiles) {
  if (!tensor_cores_fit(table, hidden) || tiles == GroupedTiles::cuda_cores) return false;
  return tiles == GroupedTiles::tensor_cores || pairs >= kGroupedTensorCorePairs * table.experts;
}

}  // namespace

int64_t moe_grouped_scratch_bytes(const ExpertTable& table, int64_t tokens, int64_t hidden, int64_t top_k) {
  return cuda_moe_grouped_layout(table.experts, table.intermediate, tokens, hidden, top_k).total;
}

void moe_grouped(Stream& stream, const ExpertTable& table, const float* x, int64_t tokens, int64_t hidden,
                 const int32_t* ids, const float* weights, int64_t top_k, void* scratch, float* out,
                 GroupedTiles tile_kind, TensorCoreMath math) {
  if (tokens <= 0) return;
  if (table.gate_type != table.up_type)
    throw Error(ErrorKind::internal, "cuda::moe_grouped: the experts' gate and up differ in type");
  if (tile_kind == GroupedTiles::tensor_cores && !tensor_cores_fit(table, hidden))
    throw Error(ErrorKind::invalid_argument, text("cuda::moe_grouped: tensor-core tiles need widths that are multiples of ",
                                                  tc::kStep, " (hidden ", hidden, ", intermediate ", table.intermediate, ")"));
  const int64_t pairs = tokens * top_k;
  const bool tensor_cores = use_tensor_cores(table, pairs, hidden, tile_kind);
  static_assert(tc::kRows == bf16::kRows, "both tensor-core tiles take 64 pairs");
  const int64_t per_tile = tensor_cores ? tc::kRows : kTile;
  // Enough tile slots for either tile size (the layout counts kTile pairs a tile).
  const CudaMoeGroupedLayout layout = cuda_moe_grouped_layout(table.experts, table.intermediate, tokens, hidden, top_k);
  const int64_t tile_slots = layout.tile_slots;
  auto* ints = static_cast<int32_t*>(scratch);
  int32_t* counts = ints;                          // [2·experts + 1]
  int32_t* order = counts + 2 * table.experts + 1;  // [pairs]
  int32_t* tiles = order + pairs;                   // [1]
  int32_t* tile_expert = tiles + 1;                 // [tile_slots]
  int32_t* tile_begin = tile_expert + tile_slots;   // [tile_slots]
  auto* floats = reinterpret_cast<float*>(static_cast<char*>(scratch) + layout.floats_offset);
  float* gathered = floats;                      // [pairs, hidden]
  float* act = gathered + pairs * hidden;        // [pairs, intermediate]
  float* slots = act + pairs * table.intermediate;  // [pairs, hidden], by pair
  cudaStream_t s = detail::native(stream);
  group_kernel<<<1, 1024, 0, s>>>(ids, pairs, table.experts, hidden, static_cast<int32_t>(per_tile), counts, order,
                                  tiles, tile_expert, tile_begin, slots);
  detail::check_launch("moe grouping");
  gather_pairs_kernel<<<detail::grid_dim(pairs, "moe gather"), 256, 0, s>>>(x, hidden, order, counts, table.experts,
                                                                            top_k, gathered);
  detail::check_launch("moe gather");
  const bool bf16_tiles = tensor_cores && math == TensorCoreMath::bf16;
  const int64_t gate_rows_per_block = bf16_tiles ? bf16::kCols / 2 : tensor_cores ? tc::kOut : kWarps;
  const int64_t down_rows_per_block = bf16_tiles ? bf16::kCols : tensor_cores ? tc::kOut : kWarps;
  const dim3 gate_grid(detail::grid_dim((table.intermediate + gate_rows_per_block - 1) / gate_rows_per_block, "moe gate/up"),
                       detail::grid_dim(tile_slots, "moe gate/up (tiles)", 65535));
  const dim3 down_grid(detail::grid_dim((hidden + down_rows_per_block - 1) / down_rows_per_block, "moe down"),
                       detail::grid_dim(tile_slots, "moe down (tiles)", 65535));
  const bool gate_known = dispatch_weight_type(table.gate_type, [&](auto decoder) {
    using D = decltype(decoder);
    if (bf16_tiles) {
      detail::opt_in_shared_memory(grouped_gate_up_bf16_kernel<D>, bf16::shared_bytes<D>(), "moe gate/up (bf16, shared memory opt-in)");
      grouped_gate_up_bf16_kernel<D><<<gate_grid, bf16::kThreads, bf16::shared_bytes<D>(), s>>>(
          table, tiles, tile_expert, tile_begin, counts, gathered, hidden, act);
    } else if (tensor_cores) {
      constexpr size_t shared = gate_up_shared_bytes();
      detail::opt_in_shared_memory(grouped_gate_up_tc_kernel<D>, shared, "moe gate/up (shared memory opt-in)");
      grouped_gate_up_tc_kernel<D><<<gate_grid, tc::kThreads, shared, s>>>(table, tiles, tile_expert, tile_begin,
                                                                           counts, gathered, hidden, act);
    } else
      grouped_gate_up_kernel<D><<<gate_grid, kWarps * 32, 0, s>>>(table, tiles, tile_expert, tile_begin, counts,
                                                                  gathered, hidden, act);
  });
  if (!gate_known) throw Error(ErrorKind::unsupported, text("cuda::moe_grouped: no kernel for ", dtype_name(table.gate_type)));
  detail::check_launch("moe gate/up (grouped)");
  const bool down_known = dispatch_weight_type(table.down_type, [&](auto decoder) {
    using D = decltype(decoder);
    if (bf16_tiles) {
      detail::opt_in_shared_memory(grouped_down_bf16_kernel<D>, bf16::shared_bytes<D>(), "moe down (bf16, shared memory opt-in)");
      grouped_down_bf16_kernel<D><<<down_grid, bf16::kThreads, bf16::shared_bytes<D>(), s>>>(
          table, tiles, tile_expert, tile_begin, counts, order, act, hidden, slots);
    } else if (tensor_cores)
      grouped_down_tc_kernel<D><<<down_grid, tc::kThreads, 0, s>>>(table, tiles, tile_expert, tile_begin, counts,
                                                                   order, act, hidden, slots);
    else
      grouped_down_kernel<D><<<down_grid, kWarps * 32, 0, s>>>(table, tiles, tile_expert, tile_begin, counts, order,
                                                               act, hidden, slots);
  });
  if (!down_known) throw Error(ErrorKind::unsupported, text("cuda::moe_grouped: no kernel for ", dtype_name(table.down_type)));
  detail::check_launch("moe down (grouped)");
  weighted_sum_slots(stream, slots, weights, tokens, top_k, hidden, out);
}

}  // namespace tandem::cuda
