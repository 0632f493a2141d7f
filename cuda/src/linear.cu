// Linear layers, dequantisation and the embedding lookup over stored weight types (dequant.cuh).
// The linear kernel is a GEMV for decode and small batches: one warp per output row streams the
// row once, 32 values per lane step dequantised in registers, applied to a tile of up to kTile
// tokens (x staged in shared memory when it fits). Batches of kTensorCoreMinRows tokens and more go
// to the tensor cores (linear_tensor_cores.cu) when their shape allows.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "bf16_rows.cuh"
#include "dequant.cuh"
#include "head_norm_rope.cuh"
#include "kv_rows.cuh"
#include "lane_blocks.cuh"
#include "launch.cuh"
#include "normed_input.cuh"
#include "q8_activations.cuh"
#include "router_topk.cuh"
#include "staged_rows.cuh"
#include "tensor_core_linear.cuh"
#include "tandem/backend/cuda_q6k_staging.hpp"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {

using detail::Decoder;
using detail::dispatch_weight_type;

namespace {

constexpr int kWarps = 4;         // output rows per block, x read from global memory
constexpr int kSharedWarps = 16;  // output rows per block, x staged in shared memory (read once per block)
constexpr int kLaneWarps = 8;     // output rows per block of the Q4_K/Q6_K lane kernel
constexpr int kTile = 8;          // tokens per block

using detail::kFp8Block;
using detail::kSharedBytes;
using detail::padded_floats;
using detail::padded_index;

template <typename D, bool SharedX>
__global__ void linear_kernel(const uint8_t* weight, int64_t row_bytes, int64_t out_features, int64_t in_features,
                              const float* block_scales, int64_t scale_cols, const float* bias, const float* x,
                              int64_t rows, int tile, float* y) {
  extern __shared__ float xs[];
  const int lane = threadIdx.x % 32;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * tile;
  const int nrows = static_cast<int>(rows - r0 < tile ? rows - r0 : tile);
  const int64_t stride = SharedX ? padded_floats(in_features) : in_features;
  const float* xt = x + r0 * in_features;
  if constexpr (SharedX) {
    detail::stage_rows(xt, in_features, nrows, in_features, xs);
    xt = xs;
  }
  const int64_t o = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (o >= out_features) return;
  const uint8_t* w = weight + o * row_bytes;
  float acc[kTile] = {};
  const int64_t chunks = in_features / 32;
  float v[32];
  for (int64_t c = lane; c < chunks; c += 32) {
    D::chunk(w, c, v);
    if (block_scales != nullptr) {
      const float s = block_scales[(o / kFp8Block) * scale_cols + (c * 32) / kFp8Block];
#pragma unroll
      for (int j = 0; j < 32; ++j) v[j] = __fmul_rn(v[j], s);
    }
    const int64_t base = SharedX ? c * 33 : c * 32;
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
      if (r < nrows) {
        const float* xr = xt + r * stride + base;
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < 32; ++j) a += v[j] * xr[j];
        acc[r] += a;
      }
    }
  }
  if constexpr (D::plain) {  // a tail narrower than 32 values
    for (int64_t i = chunks * 32 + lane; i < in_features; i += 32) {
      float wi = D::element(w, i);
      if (block_scales != nullptr) wi = __fmul_rn(wi, block_scales[(o / kFp8Block) * scale_cols + i / kFp8Block]);
      for (int r = 0; r < nrows; ++r) acc[r] += wi * xt[r * stride + (SharedX ? padded_index(i) : i)];
    }
  }
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const float s = detail::warp_sum(acc[r]);
    if (lane == 0 && r < nrows) y[(r0 + r) * out_features + o] = s + (bias != nullptr ? bias[o] : 0.f);
  }
}

// Up to kMaxLaneGroup matrices of one type and width read by one launch (the lane kernel's rows are
// theirs in turn: row o of the launch is row o - end[m - 1] of matrix m), e.g. a layer's q, k and v.
constexpr int kMaxLaneGroup = 4;
struct LaneGroup {
  const uint8_t* weight[kMaxLaneGroup] = {};
  const float* bias[kMaxLaneGroup] = {};
  float* y[kMaxLaneGroup] = {};
  int64_t end[kMaxLaneGroup] = {};  // rows of matrices 0..m together
  int count = 0;
  bool prefetch = false;  // each block asks L2 for its first rows before it waits (Stream::prefetch_ahead)
};

// Row `row` of a launch: matrix m's row o (a row past the last matrix's end stays in the last).
struct GroupRow {
  int m;
  int64_t o;
};
__device__ __forceinline__ GroupRow locate(const LaneGroup& group, int64_t row) {
  int m = 0;
  while (m + 1 < group.count && row >= group.end[m]) ++m;
  return {m, row - (m == 0 ? 0 : group.end[m - 1])};
}

// What the int8 lane kernel does with a row's output after writing it, per matrix of its group: a
// GQA layer's prologue (gqa_prologue) spread over the q, k and v launch. A value row goes into the
// cache's plane 1 as it is written; each query and key row counts itself in at its head's counter,
// and the warp whose row completes a head normalises and rotates it (head_norm_rope.cuh, the
// prologue kernel's device code: the same bits), a key head also into plane 0. Opt-in: a fence and an
// atomic's round trip per row cost more than the prologue's own launch (docs/PERF.md).
enum RowRole : int { kPlainRows = 0, kQueryHeads, kKeyHeads, kValueRows };
struct HeadsTail {
  GqaTail gqa;
  int role[kMaxLaneGroup] = {};
  bool active = false;
};

__device__ __forceinline__ void store_kv(const GqaTail& g, int64_t plane, int64_t index, float value) {
  char* row = detail::kv_row_at(static_cast<char*>(g.layer_base), g.kv.block_tokens, g.kv.block_stride,
                                g.kv.row_bytes, plane, *g.slot, g.block_table);
  switch (g.kv.type) {
    case KvType::f16: reinterpret_cast<__half*>(row)[index] = detail::encode_kv<__half>(value); break;
    case KvType::bf16:
      reinterpret_cast<__nv_bfloat16*>(row)[index] = detail::encode_kv<__nv_bfloat16>(value);
      break;
    default: reinterpret_cast<float*>(row)[index] = value; break;
  }
}

// By the whole warp that wrote row o (value) of matrix m; scratch: 2 · head_dim floats of its own.
__device__ __forceinline__ void finish_row(const HeadsTail& tail, const LaneGroup& group, int m, int64_t o, float value,
                                           float* scratch) {
  const GqaTail& g = tail.gqa;
  const int role = tail.role[m], lane = threadIdx.x % 32;
  if (role == kValueRows) {
    if (lane == 0) store_kv(g, 1, o, value);
    return;
  }
  if (role != kQueryHeads && role != kKeyHeads) return;
  const bool key = role == kKeyHeads;
  const int64_t h = o / g.head_dim;
  unsigned* counter = g.arrivals + (key ? g.heads : 0) + h;
  unsigned arrived = 0;
  if (lane == 0) {
    __threadfence();  // the row written above, before it counts
    arrived = atomicAdd(counter, 1u) + 1;
  }
  arrived = __shfl_sync(0xffffffffu, arrived, 0);
  if (arrived != static_cast<unsigned>(g.head_dim)) return;
  __threadfence();
  float* own = scratch;
  float* cos_of = scratch + g.head_dim;
  float* sin_of = cos_of + g.half;
  detail::head_rope_table(*g.rope_position, g.inv_freq, g.half, g.attention_factor, cos_of, sin_of, lane, 32);
  __syncwarp();
  detail::norm_rope_head(group.y[m] + h * g.head_dim, own, g.head_dim, key ? g.k_norm : g.q_norm, g.eps, cos_of,
                         sin_of, g.half, g.neox);
  if (key)
    for (int64_t i = lane; i < g.head_dim; i += 32) store_kv(g, 0, h * g.head_dim + i, own[i]);
  if (lane == 0) *counter = 0;
}

// Before wait_for_prior_grids, with group.prefetch: row `row` of the launch asked of L2 by the
// `splits` warps that share it (part = this warp's place among them).
__device__ __forceinline__ void prefetch_row(const LaneGroup& group, int64_t row_bytes, int64_t row, int part,
                                             int splits) {
  if (!group.prefetch || row >= group.end[group.count - 1]) return;
  const GroupRow at = locate(group, row);
  detail::prefetch_l2(group.weight[at.m] + at.o * row_bytes, row_bytes,
                      part * 32 + static_cast<int>(threadIdx.x % 32), splits * 32);
}

// Rows read a 256-value block at a time by the whole warp (lane_blocks.cuh: Q4_K/Q6_K, and plain
// f32/f16/bf16 rows), Batch blocks' loads in flight per warp. A row's blocks are shared among
// `splits` warps of the block (1, 2, 4 or 8; blocks part, part + splits, …), whose sums meet in
// shared memory in part order: a warp keeps only a few loads in flight, so a matrix of few rows
// (K/V, O, the router) needs more warps than rows to keep enough of HBM's bandwidth busy. Tile 1 is
// the decode token's kernel (no per-row guards); Tile kTile takes up to kTile tokens. With
// norm.hidden, the decode token is the layer's add + RMSNorm of the residual row (normed_input.cuh),
// staged in dynamic shared memory (normed_row). lane_rows is the kernels' body: a thread that returns
// has no more rows to write.
template <typename L, int Tile>
__device__ __forceinline__ void lane_rows(const LaneGroup& group, int64_t row_bytes, int64_t in_features,
                                          const float* x, int64_t rows, int splits, const AddRmsNorm& norm,
                                          float* normed_row) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, part = warp % splits;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kLaneWarps / splits) + warp / splits;
  unsigned ticket = 0;
  if constexpr (Tile == 1) {
    if (norm.hidden != nullptr) {
      detail::normalise_input(norm, normed_row);
      x = normed_row;
      ticket = detail::count_in(norm);
    }
  }
  constexpr int kBatch = Tile == 1 ? 8 : 4;
  __shared__ float partial[kLaneWarps][Tile];
  const auto [m, o] = locate(group, row);
  const int64_t out_features = group.end[m] - (m == 0 ? 0 : group.end[m - 1]);
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * Tile;
  const int nrows = static_cast<int>(rows - r0 < Tile ? rows - r0 : Tile);
  float acc[Tile] = {};
  if (o < out_features)
    detail::lane_row_dot<L, Tile, kBatch>(group.weight[m] + o * row_bytes, part, in_features / 256, splits, lane,
                                          x + r0 * in_features, in_features, nrows, acc);
#pragma unroll
  for (int r = 0; r < Tile; ++r) acc[r] = detail::warp_sum(acc[r]);
  if (warp == 0) detail::finish_normed_input(norm, ticket);
  if (splits > 1) {
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < Tile; ++r) partial[warp][r] = acc[r];
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int r = 0; r < Tile; ++r) {
      float sum = 0.f;
      for (int j = 0; j < splits; ++j) sum += partial[warp + j][r];
      acc[r] = sum;
    }
  }
  if (o >= out_features) return;
  const float* bias = group.bias[m];
#pragma unroll
  for (int r = 0; r < Tile; ++r)
    if (lane == 0 && r < nrows) group.y[m][(r0 + r) * out_features + o] = acc[r] + (bias != nullptr ? bias[o] : 0.f);
}

// Before wait_for_prior_grids: the rows of this block's warps asked of L2 (the first token tile's blocks).
__device__ __forceinline__ void prefetch_block_rows(const LaneGroup& group, int64_t row_bytes, int splits) {
  const int warp = threadIdx.x / 32;
  if (blockIdx.y == 0)
    prefetch_row(group, row_bytes, static_cast<int64_t>(blockIdx.x) * (kLaneWarps / splits) + warp / splits,
                 warp % splits, splits);
}

template <typename L, int Tile>
__global__ void __launch_bounds__(kLaneWarps * 32)
    linear_lanes_kernel(LaneGroup group, int64_t row_bytes, int64_t in_features, const float* x, int64_t rows,
                        int splits, AddRmsNorm norm) {
  prefetch_block_rows(group, row_bytes, splits);
  detail::wait_for_prior_grids();
  extern __shared__ __align__(16) float normed_row[];
  lane_rows<L, Tile>(group, row_bytes, in_features, x, rows, splits, norm, normed_row);
}

// The router matrix's decode launch (one matrix, one token: linear_lanes_kernel<L, 1>), then the
// token's routing (router_topk.cuh) by the block that finishes last: one launch instead of two
// (opt-in: measured slower than the two, docs/PERF.md — the fence, the atomic's round trip and the
// serial tail cost more than the boundary they remove). Each block fences its logits and counts
// itself in at route.arrivals (zero between launches; the last block leaves it so); the last one
// routes with the dynamic shared memory the normalised row had.
template <typename L>
__global__ void __launch_bounds__(kLaneWarps * 32)
    route_lanes_kernel(LaneGroup group, int64_t row_bytes, int64_t in_features, const float* x, int splits,
                       AddRmsNorm norm, RouteAfter route) {
  prefetch_block_rows(group, row_bytes, splits);
  detail::wait_for_prior_grids();
  extern __shared__ __align__(16) float normed_row[];
  lane_rows<L, 1>(group, row_bytes, in_features, x, 1, splits, norm, normed_row);
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(route.arrivals, 1u) + 1 == gridDim.x * gridDim.y;
  __syncthreads();
  if (!last) return;
  __threadfence();
  detail::route_token(route.spec, group.y[0], route.bias, reinterpret_cast<double*>(normed_row), route.ids,
                      route.weights);
  if (threadIdx.x == 0) *route.arrivals = 0;
}

// linear_lanes_kernel<·, 1> for Q4_K/Q6_K rows with the token quantised per 32 values into shared
// memory first (q8_activations.cuh) and the rows' codes multiplied by dp4a: the float kernel spends
// four instructions per weight turning codes into float products, and that, not HBM, bounds it.
// A block takes row groups blockIdx.x, + gridDim.x, …, so that a tall matrix (the output head:
// 151,936 rows) quantises the token once per block, not once per 8 rows.
template <DType T>
__global__ void __launch_bounds__(kLaneWarps * 32)
    linear_lanes_q8_kernel(LaneGroup group, int64_t row_bytes, int64_t in_features, const float* x, int splits,
                           int64_t row_groups, AddRmsNorm norm, HeadsTail tail) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, part = warp % splits;
  prefetch_row(group, row_bytes, static_cast<int64_t>(blockIdx.x) * (kLaneWarps / splits) + warp / splits, part,
               splits);  // the first row group's
  detail::wait_for_prior_grids();
  extern __shared__ __align__(16) char shared[];
  __shared__ float partial[kLaneWarps];
  const auto xq = detail::q8_arrays<32>(shared, in_features);
  // After the codes (q8_bytes keeps 16-byte alignment): the normalised row, then the tail's scratch.
  float* normed_row = reinterpret_cast<float*>(shared + detail::q8_bytes<32>(in_features));
  float* head_scratch = normed_row + (norm.hidden != nullptr ? in_features : 0);
  if (norm.hidden != nullptr) {
    detail::normalise_input(norm, normed_row);
    x = normed_row;
  }
  detail::quantize_q8_32(x, in_features, xq);
  __syncthreads();
  const unsigned ticket = detail::count_in(norm);
  const int64_t total = group.end[group.count - 1];
  for (int64_t g = blockIdx.x; g < row_groups; g += gridDim.x) {
    const int64_t row = g * (kLaneWarps / splits) + warp / splits;
    const auto [m, o] = locate(group, row);
    float acc = 0.f;
    if (row < total)
      acc = detail::lane_row_dot_q8<detail::Q8Lanes<T>, 8>(group.weight[m] + o * row_bytes, part, in_features / 256,
                                                           splits, lane, xq.view());
    acc = detail::warp_sum(acc);
    if (splits > 1) {
      if (lane == 0) partial[warp] = acc;
      __syncthreads();
      float sum = 0.f;
      if (part == 0)
        for (int j = 0; j < splits; ++j) sum += partial[warp + j];
      acc = sum;
      __syncthreads();  // partial is rewritten by the next group
    }
    if (row < total && part == 0) {
      const float* bias = group.bias[m];
      const float value = acc + (bias != nullptr ? bias[o] : 0.f);
      if (lane == 0) group.y[m][o] = value;
      if (tail.active) finish_row(tail, group, m, o, value, head_scratch + warp * 2 * tail.gqa.head_dim);
    }
  }
  if (warp == 0) detail::finish_normed_input(norm, ticket);
}

// Blocks of the int8 kernel at most: enough to fill a large GPU several times over.
constexpr int64_t kQ8MaxBlocks = 1024;

// linear_lanes_q8_kernel for Q6_K rows that start 16-byte aligned (2,048 values: 1,680 bytes), one
// warp per row: Q6_K's 210-byte blocks leave the direct reader 2-byte loads only (seven per lane and
// block, the output head's 255 MB at ~980 GB/s), so the warp copies its whole row into shared memory in
// 16-byte pieces (kPieces per lane at most) and decodes the blocks from there, the next row's pieces
// already loading into registers. Each row adds its blocks in the direct reader's order: the same bits.
template <int kPieces>
__global__ void __launch_bounds__(kLaneWarps * 32)
    linear_q6k_rows_q8_kernel(LaneGroup group, int64_t row_bytes, int64_t in_features, const float* x,
                              int64_t row_groups) {
  prefetch_row(group, row_bytes, static_cast<int64_t>(blockIdx.x) * kLaneWarps + threadIdx.x / 32, 0, 1);
  detail::wait_for_prior_grids();
  using Q = detail::Q8Lanes<DType::q6_k>;
  extern __shared__ __align__(16) char shared[];
  const auto xq = detail::q8_arrays<32>(shared, in_features);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint8_t* stage = reinterpret_cast<uint8_t*>(shared + detail::q8_bytes<32>(in_features)) + warp * row_bytes;
  const int64_t total = group.end[group.count - 1], pieces = row_bytes / 16, blocks = in_features / 256;
  uint4 next[kPieces];
  const auto fetch = [&](int64_t row) {
    if (row >= total) return;
    const GroupRow at = locate(group, row);
    const auto* src = reinterpret_cast<const uint4*>(group.weight[at.m] + at.o * row_bytes);
#pragma unroll
    for (int k = 0; k < kPieces; ++k)
      if (lane + 32 * k < pieces) next[k] = __ldg(src + lane + 32 * k);
  };
  fetch(static_cast<int64_t>(blockIdx.x) * kLaneWarps + warp);  // in flight while the token is quantised
  detail::quantize_q8_32(x, in_features, xq);
  __syncthreads();
  for (int64_t g = blockIdx.x; g < row_groups; g += gridDim.x) {
    const int64_t row = g * kLaneWarps + warp;
    __syncwarp();  // the previous row's blocks are read
#pragma unroll
    for (int k = 0; k < kPieces; ++k)
      if (lane + 32 * k < pieces) reinterpret_cast<uint4*>(stage)[lane + 32 * k] = next[k];
    __syncwarp();
    fetch((g + gridDim.x) * kLaneWarps + warp);
    if (row >= total) continue;
    float acc = 0.f;
    for (int64_t blk = 0; blk < blocks; ++blk) acc += Q::dot(Q::load(stage, blk, lane), blk, lane, xq.view());
    acc = detail::warp_sum(acc);
    if (lane == 0) {
      const GroupRow at = locate(group, row);
      group.y[at.m][at.o] = acc + (group.bias[at.m] != nullptr ? group.bias[at.m][at.o] : 0.f);
    }
  }
}

// Warps per row for the lane kernel: enough that the launch has ~kTargetWarps warps, at most one per
// unit of the row (lane_row_dot) and kLaneWarps. On the H200 (bench_cuda_kernels, a4c13b3) splitting helped the
// 512- and 128-row matrices (7.7 → 5.0 and 7.5 → 3.9 µs) and cost the 4096- and 2048-row ones
// (9.1 → 12.4 and 13.3 → 13.9 µs at 8192 warps), so only matrices under 2048 rows are split.
constexpr int64_t kTargetWarps = 2048;
int lane_splits(int64_t out_features, int64_t units, int64_t token_tiles) {
  int splits = 1;
  while (splits < kLaneWarps && out_features * token_tiles * splits < kTargetWarps && 2 * splits <= units) splits *= 2;
  return splits;
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// out[r] = row (row_ids[r] or row_begin + r) of the weight as float32, or rounded to bf16.
template <typename D, typename Out>
__global__ void dequantize_kernel(const uint8_t* weight, int64_t row_bytes, int64_t in_features,
                                  const float* block_scales, int64_t scale_cols, const int32_t* row_ids,
                                  int64_t row_begin, Out* out) {
  detail::wait_for_prior_grids();
  const int64_t r = blockIdx.x;
  const int64_t src = row_ids != nullptr ? row_ids[r] : row_begin + r;
  const uint8_t* w = weight + src * row_bytes;
  Out* dst = out + r * in_features;
  if constexpr (D::plain) {
    for (int64_t i = threadIdx.x; i < in_features; i += blockDim.x) {
      float v = D::element(w, i);
      if (block_scales != nullptr) v = __fmul_rn(v, block_scales[(src / kFp8Block) * scale_cols + i / kFp8Block]);
      store(dst + i, v);
    }
  } else {
    if constexpr (std::is_same_v<Out, __nv_bfloat16> && detail::Bf16Rows<D>::available) {
      if (in_features % 256 == 0 && detail::Bf16Rows<D>::aligned(w, dst)) {  // a warp per block in turn
        detail::Bf16Rows<D>::blocks(w, threadIdx.x / 32, in_features / 256, blockDim.x / 32,
                                    static_cast<int>(threadIdx.x % 32), dst);
        return;
      }
    }
    float v[32];
    for (int64_t c = threadIdx.x; c < in_features / 32; c += blockDim.x) {
      D::chunk(w, c, v);
      detail::store32(dst + c * 32, v);
    }
  }
}

__global__ void round_bf16_kernel(const float* x, int64_t count, __nv_bfloat16* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16_rn(x[i]);
}

int64_t checked_row_bytes(DType type, int64_t in_features, const char* what) {
  if (!weight_type_supported(type))
    throw Error(ErrorKind::unsupported,
                text("cuda::", what, ": weights stored as ", dtype_name(type), " have no CUDA kernel yet (supported: f32, f16, bf16, f8_e4m3, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)"));
  const auto bytes = tandem::row_bytes(type, in_features);
  if (!bytes)
    throw Error(ErrorKind::invalid_argument,
                text("cuda::", what, ": ", in_features, " values are not whole ", dtype_name(type), " blocks"));
  return static_cast<int64_t>(*bytes);
}

int64_t scale_columns(const DeviceWeight& w) { return (w.in_features + kFp8Block - 1) / kFp8Block; }

// The lane kernel takes Q4_K/Q6_K rows and plain f32/f16/bf16 rows of whole 256-value blocks, without
// FP8 block scales, from aligned addresses.
bool lane_kernel_takes(const DeviceWeight& w, const float* x) {
  const bool x_aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const auto base = reinterpret_cast<uintptr_t>(w.data);
  const bool quantised_lanes = (w.type == DType::q4_k && base % 4 == 0) || (w.type == DType::q6_k && base % 2 == 0);
  const bool plain_lanes = (w.type == DType::f32 || w.type == DType::f16 || w.type == DType::bf16) &&
                           w.in_features % 256 == 0 && base % 16 == 0;
  return (quantised_lanes || plain_lanes) && w.block_scales == nullptr && x_aligned;
}

void add_to_group(LaneGroup& group, const DeviceWeight& w, float* y) {
  const int m = group.count++;
  group.weight[m] = static_cast<const uint8_t*>(w.data);
  group.bias[m] = w.bias;
  group.y[m] = y;
  group.end[m] = (m == 0 ? 0 : group.end[m - 1]) + w.out_features;
}

// Whether one token's rows of `type` take the integer products (Q4_K rows 16-byte aligned, Q6_K rows
// 2-byte aligned, whole 256-value blocks whose quantised token fits the shared memory).
bool lanes_q8_take(const LaneGroup& group, DType type, int64_t in_features, size_t more_shared = 0) {
  if ((type != DType::q4_k && type != DType::q6_k) || in_features % 256 != 0 ||
      detail::q8_bytes<32>(in_features) + static_cast<int64_t>(more_shared) > kSharedBytes)
    return false;
  const int alignment = type == DType::q4_k ? detail::Q8Lanes<DType::q4_k>::kAlignment
                                            : detail::Q8Lanes<DType::q6_k>::kAlignment;
  for (int m = 0; m < group.count; ++m)
    if (reinterpret_cast<uintptr_t>(group.weight[m]) % alignment != 0) return false;
  return true;
}

// Whether linear_q6k_rows_q8_kernel takes one token over these Q6_K rows: the shapes
// cuda_q6k_rows_staged allows (tandem plan prices by the same rule), each matrix 16-byte aligned, the
// staged rows and the token within the default shared memory, and no norm to apply first.
bool q6k_rows_staged(const LaneGroup& group, int64_t row_bytes, int64_t in_features, const AddRmsNorm& norm) {
  static_assert(kCudaQ6kStagedMaxRowBytes == 8 * 32 * 16, "linear_q6k_rows_q8_kernel<8>: 8 pieces a lane at most");
  if (norm.hidden != nullptr || !cuda_q6k_rows_staged(group.end[group.count - 1], row_bytes) ||
      detail::q8_bytes<32>(in_features) + kLaneWarps * row_bytes > kSharedBytes)
    return false;
  for (int m = 0; m < group.count; ++m)
    if (reinterpret_cast<uintptr_t>(group.weight[m]) % 16 != 0) return false;
  return true;
}

void launch_q6k_rows(Stream& stream, const LaneGroup& group, int64_t row_bytes, int64_t in_features, const float* x) {
  const int64_t row_groups = (group.end[group.count - 1] + kLaneWarps - 1) / kLaneWarps;
  const auto grid = detail::grid_dim(std::min(row_groups, kQ8MaxBlocks), "linear");
  const auto shared = static_cast<size_t>(detail::q8_bytes<32>(in_features) + kLaneWarps * row_bytes);
  if (row_bytes / 16 <= 4 * 32)
    detail::launch_dependent(stream, "linear (Q6_K rows staged, int8 products)", linear_q6k_rows_q8_kernel<4>, grid,
                             kLaneWarps * 32, shared, group, row_bytes, in_features, x, row_groups);
  else
    detail::launch_dependent(stream, "linear (Q6_K rows staged, int8 products)", linear_q6k_rows_q8_kernel<8>, grid,
                             kLaneWarps * 32, shared, group, row_bytes, in_features, x, row_groups);
}

void launch_lanes(Stream& stream, const LaneGroup& matrices, DType type, int64_t row_bytes, int64_t in_features,
                  const float* x, int64_t rows, bool quantised_x, const AddRmsNorm& norm = {}) {
  LaneGroup group = matrices;
  group.prefetch = stream.prefetch_ahead();
  const size_t normed_bytes = norm.hidden != nullptr ? static_cast<size_t>(in_features) * sizeof(float) : 0;
  const int tile = rows == 1 ? 1 : kTile;
  const int64_t token_tiles = (rows + tile - 1) / tile;
  const int64_t out_features = group.end[group.count - 1];
  const auto launch = [&](auto kernel, int64_t unit_blocks) {
    const int64_t units = (in_features / 256 + unit_blocks - 1) / unit_blocks;
    const int splits = lane_splits(out_features, units, token_tiles);
    const int64_t rows_per_block = kLaneWarps / splits;
    const dim3 grid(detail::grid_dim((out_features + rows_per_block - 1) / rows_per_block, "linear"),
                    detail::grid_dim(token_tiles, "linear (token tiles)", 65535));
    detail::launch_dependent(stream, "linear (lanes)", kernel, grid, kLaneWarps * 32, normed_bytes, group, row_bytes,
                             in_features, x, rows, splits, norm);
  };
  if (quantised_x && rows == 1 && lanes_q8_take(group, type, in_features, normed_bytes)) {
    const auto launch_q8 = [&](auto kernel, int64_t unit_blocks) {
      const int splits = lane_splits(out_features, (in_features / 256 + unit_blocks - 1) / unit_blocks, 1);
      const int64_t rows_per_block = kLaneWarps / splits;
      const int64_t row_groups = (out_features + rows_per_block - 1) / rows_per_block;
      detail::launch_dependent(stream, "linear (lanes, int8 products)", kernel,
                               detail::grid_dim(std::min(row_groups, kQ8MaxBlocks), "linear"), kLaneWarps * 32,
                               detail::q8_bytes<32>(in_features) + normed_bytes, group, row_bytes, in_features, x,
                               splits, row_groups, norm, HeadsTail{});
    };
    if (type == DType::q4_k)
      launch_q8(linear_lanes_q8_kernel<DType::q4_k>, detail::Q8Lanes<DType::q4_k>::kUnitBlocks);
    else if (q6k_rows_staged(group, row_bytes, in_features, norm))
      launch_q6k_rows(stream, group, row_bytes, in_features, x);
    else
      launch_q8(linear_lanes_q8_kernel<DType::q6_k>, detail::Q8Lanes<DType::q6_k>::kUnitBlocks);
    detail::check_launch("linear (lanes, int8 products)");
    return;
  }
  dispatch_weight_type(type, [&](auto decoder) {
    using D = decltype(decoder);
    if constexpr (detail::LaneBlocks<D>::available) {
      using L = detail::LaneBlocks<D>;
      if (tile == 1) launch(linear_lanes_kernel<L, 1>, L::kUnitBlocks);
      else launch(linear_lanes_kernel<L, kTile>, L::kUnitBlocks);
    } else if constexpr (detail::PlainLaneBlocks<D>::available) {
      using L = detail::PlainDot<detail::PlainLaneBlocks<D>>;
      if (tile == 1) launch(linear_lanes_kernel<L, 1>, L::kUnitBlocks);
      else launch(linear_lanes_kernel<L, kTile>, L::kUnitBlocks);
    }
  });
  detail::check_launch("linear (lanes)");
}

}  // namespace

bool weight_type_supported(DType t) noexcept {
  return dispatch_weight_type(t, [](auto) {});
}

void linear(Stream& stream, const DeviceWeight& w, const float* x, int64_t rows, float* y, TensorCoreMath math,
            bool quantised_x) {
  if (rows <= 0 || w.out_features <= 0) return;
  const int64_t rb = checked_row_bytes(w.type, w.in_features, "linear");
  if (detail::tensor_core_linear_supported(w, x, rows))
    return detail::tensor_core_linear(stream, w, rb, x, rows, y, math);
  if (lane_kernel_takes(w, x)) {
    LaneGroup group;
    add_to_group(group, w, y);
    launch_lanes(stream, group, w.type, rb, w.in_features, x, rows, quantised_x);
    return;
  }
  // As many tokens per block as fit the shared-memory budget (a decode token up to ~11.9k inputs);
  // wider rows read x from global memory.
  const int64_t row_floats = padded_floats(w.in_features);
  const auto tile = static_cast<int>(std::min<int64_t>(kTile, kSharedBytes / (row_floats * 4)));
  const bool shared = tile >= 1;
  const int warps = shared ? kSharedWarps : kWarps;
  const int token_tile = shared ? tile : kTile;
  const dim3 grid(detail::grid_dim((w.out_features + warps - 1) / warps, "linear"),
                  detail::grid_dim((rows + token_tile - 1) / token_tile, "linear (token tiles)", 65535));
  const auto shared_bytes = shared ? static_cast<size_t>(std::min<int64_t>(rows, tile) * row_floats * 4) : 0;
  dispatch_weight_type(w.type, [&](auto decoder) {
    using D = decltype(decoder);
    if (shared)
      linear_kernel<D, true><<<grid, warps * 32, shared_bytes, detail::native(stream)>>>(
          static_cast<const uint8_t*>(w.data), rb, w.out_features, w.in_features, w.block_scales, scale_columns(w),
          w.bias, x, rows, token_tile, y);
    else
      linear_kernel<D, false><<<grid, warps * 32, 0, detail::native(stream)>>>(
          static_cast<const uint8_t*>(w.data), rb, w.out_features, w.in_features, w.block_scales, scale_columns(w),
          w.bias, x, rows, token_tile, y);
  });
  detail::check_launch("linear");
}

void linears(Stream& stream, const DeviceWeight* ws, float* const* ys, int count, const float* x, int64_t rows,
             const TensorCoreMath* maths, bool quantised_x) {
  // Consecutive matrices the lane kernel takes, of one type and width, share a launch; the others
  // (and batches for the tensor cores) go one by one.
  for (int i = 0; i < count;) {
    const DeviceWeight& w = ws[i];
    if (rows <= 0 || w.out_features <= 0 || detail::tensor_core_linear_supported(w, x, rows) ||
        !lane_kernel_takes(w, x)) {
      linear(stream, w, x, rows, ys[i], maths[i], quantised_x);
      ++i;
      continue;
    }
    const int64_t rb = checked_row_bytes(w.type, w.in_features, "linear");
    LaneGroup group;
    add_to_group(group, w, ys[i]);
    int j = i + 1;
    for (; j < count && group.count < kMaxLaneGroup; ++j) {
      const DeviceWeight& o = ws[j];
      if (o.type != w.type || o.in_features != w.in_features || o.out_features <= 0 ||
          detail::tensor_core_linear_supported(o, x, rows) || !lane_kernel_takes(o, x))
        break;
      add_to_group(group, o, ys[j]);
    }
    launch_lanes(stream, group, w.type, rb, w.in_features, x, rows, quantised_x);
    i = j;
  }
}

bool norm_linears(Stream& stream, const DeviceWeight* ws, float* const* ys, int count, const AddRmsNorm& norm,
                  bool quantised_x) {
  if (count <= 0 || count > kMaxLaneGroup || norm.hidden == nullptr || norm.weight == nullptr || norm.dim <= 0 ||
      norm.arrivals == nullptr || norm.dim * static_cast<int64_t>(sizeof(float)) > kSharedBytes)
    return false;
  LaneGroup group;
  for (int i = 0; i < count; ++i) {
    const DeviceWeight& w = ws[i];
    if (w.type != ws[0].type || w.in_features != norm.dim || w.out_features <= 0 || !lane_kernel_takes(w, norm.hidden))
      return false;
    add_to_group(group, w, ys[i]);
  }
  const int64_t rb = checked_row_bytes(ws[0].type, norm.dim, "norm_linears");
  launch_lanes(stream, group, ws[0].type, rb, norm.dim, norm.hidden, 1, quantised_x, norm);
  return true;
}

namespace {

// One run of gqa_projections: matrices [begin, end) of one type in one int8 launch with their roles.
void launch_heads_run(Stream& stream, const DeviceWeight* w, float* const* ys, int begin, int end,
                      const AddRmsNorm& norm, const float* x, const HeadsTail& proto, size_t shared) {
  LaneGroup group;
  HeadsTail tail = proto;
  for (int i = begin; i < end; ++i) {
    tail.role[group.count] = i == 0 ? kQueryHeads : i == 1 ? kKeyHeads : kValueRows;
    add_to_group(group, w[i], ys[i]);
  }
  group.prefetch = stream.prefetch_ahead();
  const DType type = w[begin].type;
  const int64_t in = w[begin].in_features, out = group.end[group.count - 1];
  const int64_t rb = checked_row_bytes(type, in, "gqa_projections");
  const int64_t unit_blocks =
      type == DType::q4_k ? detail::Q8Lanes<DType::q4_k>::kUnitBlocks : detail::Q8Lanes<DType::q6_k>::kUnitBlocks;
  const int splits = lane_splits(out, (in / 256 + unit_blocks - 1) / unit_blocks, 1);
  const int64_t rows_per_block = kLaneWarps / splits;
  const int64_t row_groups = (out + rows_per_block - 1) / rows_per_block;
  const auto grid = detail::grid_dim(std::min(row_groups, kQ8MaxBlocks), "gqa_projections");
  if (type == DType::q4_k)
    detail::launch_dependent(stream, "gqa projections (lanes, int8 products, heads)",
                             linear_lanes_q8_kernel<DType::q4_k>, grid, kLaneWarps * 32, shared, group, rb, in, x,
                             splits, row_groups, norm, tail);
  else
    detail::launch_dependent(stream, "gqa projections (lanes, int8 products, heads)",
                             linear_lanes_q8_kernel<DType::q6_k>, grid, kLaneWarps * 32, shared, group, rb, in, x,
                             splits, row_groups, norm, tail);
  detail::check_launch("gqa projections (lanes, int8 products, heads)");
}

}  // namespace

bool gqa_projections(Stream& stream, const DeviceWeight* w, float* const* ys, const AddRmsNorm& norm, const float* x,
                     const GqaTail& gqa) {
  const int64_t hd = gqa.head_dim;
  if (!gqa_prologue_fused(gqa.kv.type, hd) || hd <= 0 || gqa.heads <= 0 || gqa.kv_heads <= 0 || 2 * gqa.half > hd ||
      gqa.arrivals == nullptr || gqa.layer_base == nullptr || gqa.slot == nullptr || gqa.block_table == nullptr ||
      gqa.rope_position == nullptr || (gqa.half > 0 && gqa.inv_freq == nullptr))
    return false;
  const float* input = norm.hidden != nullptr ? norm.hidden : x;
  const int64_t in = w[0].in_features;
  const int64_t outs[3] = {gqa.heads * hd, gqa.kv_heads * hd, gqa.kv_heads * hd};
  for (int i = 0; i < 3; ++i)
    if ((w[i].type != DType::q4_k && w[i].type != DType::q6_k) || w[i].in_features != in ||
        w[i].out_features != outs[i] || input == nullptr || !lane_kernel_takes(w[i], input))
      return false;
  if (norm.hidden != nullptr &&
      (norm.weight == nullptr || norm.dim != in || norm.arrivals == nullptr || norm.normed == nullptr))
    return false;
  int first = 1;
  while (first < 3 && w[first].type == w[0].type) ++first;
  const size_t scratch = static_cast<size_t>(kLaneWarps) * 2 * static_cast<size_t>(hd) * sizeof(float);
  const size_t normed_bytes = norm.hidden != nullptr ? static_cast<size_t>(in) * sizeof(float) : 0;
  const auto takes = [&](int begin, int end, size_t more) {
    LaneGroup group;
    for (int i = begin; i < end; ++i) add_to_group(group, w[i], ys[i]);
    return lanes_q8_take(group, w[begin].type, in, more);
  };
  if (!takes(0, first, normed_bytes + scratch) || (first < 3 && !takes(first, 3, scratch))) return false;
  HeadsTail proto;
  proto.gqa = gqa;
  proto.active = true;
  const size_t codes = static_cast<size_t>(detail::q8_bytes<32>(in));
  launch_heads_run(stream, w, ys, 0, first, norm, x, proto, codes + normed_bytes + scratch);
  // The other type's rows read the row the first launch normalised.
  if (first < 3)
    launch_heads_run(stream, w, ys, first, 3, AddRmsNorm{}, norm.hidden != nullptr ? norm.normed : x, proto,
                     codes + scratch);
  return true;
}

bool linear_route(Stream& stream, const DeviceWeight& w, float* logits, const AddRmsNorm& norm, const float* x,
                  const RouteAfter& route) {
  const RouterSpec& spec = route.spec;
  const float* input = norm.hidden != nullptr ? norm.hidden : x;
  // route_token's values equal the router kernel's where the block has a thread per expert.
  if (w.type != DType::f32 || w.out_features != spec.experts || spec.experts > kLaneWarps * 32 || w.bias != nullptr ||
      route.arrivals == nullptr || route.ids == nullptr || route.weights == nullptr || spec.top_k <= 0 ||
      spec.top_k > spec.experts || spec.n_group <= 0 || spec.topk_group <= 0 || spec.topk_group > spec.n_group ||
      spec.experts % spec.n_group != 0 || input == nullptr || !lane_kernel_takes(w, input))
    return false;
  if (norm.hidden != nullptr && (norm.weight == nullptr || norm.dim != w.in_features || norm.arrivals == nullptr))
    return false;
  const size_t normed_bytes = norm.hidden != nullptr ? static_cast<size_t>(w.in_features) * sizeof(float) : 0;
  const size_t shared = std::max(normed_bytes, static_cast<size_t>(detail::route_arrays(spec)) * sizeof(double));
  if (shared > static_cast<size_t>(kSharedBytes)) return false;
  const int64_t rb = checked_row_bytes(w.type, w.in_features, "linear_route");
  LaneGroup group;
  add_to_group(group, w, logits);
  group.prefetch = stream.prefetch_ahead();
  using L = detail::PlainDot<detail::PlainLaneBlocks<Decoder<DType::f32>>>;
  const int splits = lane_splits(w.out_features, (w.in_features / 256 + L::kUnitBlocks - 1) / L::kUnitBlocks, 1);
  const int64_t rows_per_block = kLaneWarps / splits;
  detail::launch_dependent(stream, "router (lanes, then top-k)", route_lanes_kernel<L>,
                           detail::grid_dim((w.out_features + rows_per_block - 1) / rows_per_block, "linear_route"),
                           kLaneWarps * 32, shared, group, rb, w.in_features, input, splits, norm, route);
  detail::check_launch("router (lanes, then top-k)");
  return true;
}

void linear(Stream& stream, DType weight_type, const void* weight, int64_t out_features, int64_t in_features,
            const float* x, int64_t rows, float* y) {
  linear(stream, DeviceWeight{weight_type, weight, out_features, in_features, nullptr, nullptr}, x, rows, y);
}

void dequantize_rows(Stream& stream, const DeviceWeight& w, int64_t row_begin, int64_t row_end, float* out) {
  if (row_end <= row_begin) return;
  if (row_begin < 0 || row_end > w.out_features)
    throw Error(ErrorKind::out_of_range, text("cuda::dequantize_rows: rows [", row_begin, ", ", row_end, ") of a ", w.out_features, "-row weight"));
  const int64_t rb = checked_row_bytes(w.type, w.in_features, "dequantize_rows");
  dispatch_weight_type(w.type, [&](auto decoder) {
    using D = decltype(decoder);
    dequantize_kernel<D, float><<<detail::grid_dim(row_end - row_begin, "dequantize_rows"), 128, 0,
                                  detail::native(stream)>>>(static_cast<const uint8_t*>(w.data), rb, w.in_features,
                                                            w.block_scales, scale_columns(w), nullptr, row_begin, out);
  });
  detail::check_launch("dequantize_rows");
}

void dequantize_bf16(Stream& stream, const DeviceWeight& w, void* out) {
  if (w.out_features <= 0) return;
  const int64_t rb = checked_row_bytes(w.type, w.in_features, "dequantize_bf16");
  dispatch_weight_type(w.type, [&](auto decoder) {
    using D = decltype(decoder);
    dequantize_kernel<D, __nv_bfloat16><<<detail::grid_dim(w.out_features, "dequantize_bf16"), 128, 0,
                                          detail::native(stream)>>>(
        static_cast<const uint8_t*>(w.data), rb, w.in_features, w.block_scales, scale_columns(w), nullptr, 0,
        static_cast<__nv_bfloat16*>(out));
  });
  detail::check_launch("dequantize_bf16");
}

void round_bf16(Stream& stream, const float* x, int64_t count, void* out) {
  if (count <= 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 4096));
  round_bf16_kernel<<<blocks, 256, 0, detail::native(stream)>>>(x, count, static_cast<__nv_bfloat16*>(out));
  detail::check_launch("round_bf16");
}

void embedding(Stream& stream, DType type, const void* table, int64_t width, const int32_t* ids, int64_t count,
               float* out) {
  if (count <= 0) return;
  const int64_t rb = checked_row_bytes(type, width, "embedding");
  dispatch_weight_type(type, [&](auto decoder) {
    using D = decltype(decoder);
    detail::launch_dependent(stream, "embedding", dequantize_kernel<D, float>, detail::grid_dim(count, "embedding"), 128,
                             0, static_cast<const uint8_t*>(table), rb, width, nullptr, 0, ids, 0, out);
  });
}

}  // namespace tandem::cuda
