// The routed experts of a few tokens without the host: each (token, slot) pair reads its expert id
// on the device and the expert's rows through a table of per-expert pointers, so a decode step needs
// no copy of the ids to the host, no grouping and two launches per layer instead of four per hit
// expert. Each output row is the linear kernel's dot product (Q4_K/Q6_K: lane_blocks.cuh; other
// types: lanes over 32-value chunks, then a warp sum) and the combine is weighted_sum_slots' (slot
// order, _rn): the results equal the grouped path. An id outside the table (the router never makes
// one) leaves its pair out of the sum.
#include "dequant.cuh"
#include "lane_blocks.cuh"
#include "launch.cuh"
#include "q8_activations.cuh"
#include "silu_glu.cuh"
#include "staged_rows.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {

using detail::dispatch_weight_type;

namespace {

constexpr int kWarps = 16;  // output rows per block
constexpr int kGateWarps = 8;  // gate_up_kernel's: its ~80 registers per thread leave 3 blocks of 8 warps per SM
constexpr int kSlotsInFlight = 8;  // down rows of one output read together

using detail::kFp8Block;
using detail::kSharedBytes;
using detail::padded_floats;
using detail::padded_index;
using detail::stage_rows;

// This lane's share of the dot product of stored row o with x (warp_sum of it is the row's dot).
template <typename D, bool Padded>
__device__ __forceinline__ float lane_dot(const uint8_t* w, const float* scales, int64_t scale_cols, int64_t o,
                                          const float* x, int64_t in_features, int lane) {
  if constexpr (!Padded && detail::LaneBlocks<D>::available) {
    if (scales == nullptr) {
      float lane_acc[1] = {0.f};
      detail::lane_row_dot<detail::LaneBlocks<D>, 1, 4>(w, 0, in_features / 256, 1, lane, x, 0, 1, lane_acc);
      return lane_acc[0];
    }
  }
  float acc = 0.f;
  float v[32];
  for (int64_t c = lane; c < in_features / 32; c += 32) {
    D::chunk(w, c, v);
    if (scales != nullptr) {
      const float s = scales[(o / kFp8Block) * scale_cols + (c * 32) / kFp8Block];
#pragma unroll
      for (int j = 0; j < 32; ++j) v[j] = __fmul_rn(v[j], s);
    }
    const float* xr = x + (Padded ? c * 33 : c * 32);
    float a = 0.f;
#pragma unroll
    for (int j = 0; j < 32; ++j) a += v[j] * xr[j];
    acc += a;
  }
  if constexpr (D::plain) {
    for (int64_t i = (in_features / 32) * 32 + lane; i < in_features; i += 32) {
      float wi = D::element(w, i);
      if (scales != nullptr) wi = __fmul_rn(wi, scales[(o / kFp8Block) * scale_cols + i / kFp8Block]);
      acc += wi * x[Padded ? padded_index(i) : i];
    }
  }
  return acc;
}

// act[p, o] = silu(gate_e[o] · x[t]) · (up_e[o] · x[t]) for pair p = (t, slot), e = ids[p].
template <typename D, bool SharedX>
__global__ void __launch_bounds__(kGateWarps * 32)
    gate_up_kernel(ExpertTable table, const int32_t* ids, int64_t top_k, const float* x, int64_t hidden,
                   float* act) {
  extern __shared__ float xs[];
  const int lane = threadIdx.x % 32;
  const int64_t p = blockIdx.y, t = p / top_k;
  const float* xt = x + t * hidden;
  if constexpr (SharedX) {
    stage_rows(xt, hidden, 1, hidden, xs);
    xt = xs;
  }
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGateWarps + threadIdx.x / 32;
  if (o >= table.intermediate) return;
  const int32_t e = ids[p];
  if (e < 0 || e >= table.experts) return;
  const auto* gate = static_cast<const uint8_t*>(table.gate[e]) + o * table.gate_row_bytes;
  const auto* up = static_cast<const uint8_t*>(table.up[e]) + o * table.up_row_bytes;
  const int64_t cols = (hidden + kFp8Block - 1) / kFp8Block;
  // Both rows' loads in flight together: the two dot products are independent until their sums.
  float g = 0.f, u = 0.f;
  bool paired = false;
  if constexpr (!SharedX && detail::LaneBlocks<D>::available)
    if (table.gate_scales == nullptr && table.up_scales == nullptr) {
      detail::lane_row_dot2<detail::LaneBlocks<D>, 8>(gate, up, hidden / 256, lane, xt, g, u);
      paired = true;
    }
  if (!paired) {
    g = lane_dot<D, SharedX>(gate, table.gate_scales ? table.gate_scales[e] : nullptr, cols, o, xt, hidden, lane);
    u = lane_dot<D, SharedX>(up, table.up_scales ? table.up_scales[e] : nullptr, cols, o, xt, hidden, lane);
  }
  g = detail::warp_sum(g);
  u = detail::warp_sum(u);
  if (lane == 0) act[p * table.intermediate + o] = detail::silu_glu(g, u);
}

// gate_up_kernel for Q4_K/Q6_K rows with the token's activations quantised per 32 values into
// shared memory first (q8_activations.cuh) and the rows' codes multiplied by dp4a: a weight's product
// costs a fraction of an instruction instead of four (shift, mask, int→float, FMA), which is what
// bounds the float kernel (Nsight Compute, H100: 0.39 instructions issued per scheduler cycle, DRAM
// 19 % busy). A row not aligned for Q8Lanes falls back to the float dot. With `out_q8`, the block's 8
// outputs (one group: intermediate is a multiple of 8) are also quantised there for the down kernel.
template <DType T>
__global__ void __launch_bounds__(kGateWarps * 32, 3)
    gate_up_q8_kernel(ExpertTable table, const int32_t* ids, int64_t top_k, const float* x, int64_t hidden,
                      float* act, detail::Q8Arrays<8> out_q8, bool quantise_out) {
  detail::wait_for_prior_grids();
  static_assert(kGateWarps == 8, "a block's outputs are one group of 8");
  extern __shared__ __align__(16) char shared[];
  __shared__ float outs[kGateWarps];
  using Q = detail::Q8Lanes<T>;
  using L = detail::LaneBlocks<detail::Decoder<T>>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t p = blockIdx.y, t = p / top_k;
  const float* xt = x + t * hidden;
  const auto xq = detail::q8_arrays<32>(shared, hidden);
  detail::quantize_q8_32(xt, hidden, xq);
  __syncthreads();
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kGateWarps, o = o0 + warp;
  const int32_t e = ids[p];
  if (e < 0 || e >= table.experts) return;  // the whole block: one pair
  float v = 0.f;
  if (o < table.intermediate) {
    const auto* gate = static_cast<const uint8_t*>(table.gate[e]) + o * table.gate_row_bytes;
    const auto* up = static_cast<const uint8_t*>(table.up[e]) + o * table.up_row_bytes;
    float g = 0.f, u = 0.f;
    // Q6_K rows are 2-byte aligned wherever the float kernels take them: only Q4_K needs the fallback.
    const bool aligned = Q::kAlignment <= 2 || (reinterpret_cast<uintptr_t>(gate) % Q::kAlignment == 0 &&
                                                reinterpret_cast<uintptr_t>(up) % Q::kAlignment == 0);
    if (aligned) {
      const uint8_t* const rows[2] = {gate, up};  // both rows' loads in flight together
      float acc[2];
      detail::lane_rows_dot_q8<Q, (Q::kUnitBlocks > 1 ? 8 : 4)>(rows, 2, 0, hidden / 256, 1, lane, xq.view(), acc);
      g = acc[0], u = acc[1];
    } else if constexpr (Q::kAlignment > 2) {
      detail::lane_row_dot2<L, 8>(gate, up, hidden / 256, lane, xt, g, u);
    }
    g = detail::warp_sum(g);
    u = detail::warp_sum(u);
    v = detail::silu_glu(g, u);
    if (lane == 0) act[p * table.intermediate + o] = v;
  }
  if (!quantise_out) return;
  if (lane == 0) outs[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0 && o0 + kGateWarps <= table.intermediate)
    detail::quantize_q8_8(outs, (p * table.intermediate + o0) / 8, out_q8);
}

// out[t, o] = Σ_s weights[t, s] · (down_e[o] · act[(t, s)]), e = ids[(t, s)], in slot order.
template <typename D, bool SharedX>
__global__ void down_kernel(ExpertTable table, const int32_t* ids, const float* weights, int64_t top_k,
                            const float* act, int64_t hidden, float* out) {
  extern __shared__ float xs[];
  const int lane = threadIdx.x % 32;
  const int64_t t = blockIdx.y;
  const float* rows = act + t * top_k * table.intermediate;  // the token's top_k activation rows
  const int64_t row_stride = SharedX ? padded_floats(table.intermediate) : table.intermediate;
  if constexpr (SharedX) {
    stage_rows(rows, table.intermediate, static_cast<int>(top_k), table.intermediate, xs);
    rows = xs;
  }
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (o >= hidden) return;
  const int64_t cols = (table.intermediate + kFp8Block - 1) / kFp8Block;
  // kSlotsInFlight slots' rows are read at once (their loads overlap), then summed in slot order.
  float sum = 0.f;
  for (int64_t s0 = 0; s0 < top_k; s0 += kSlotsInFlight) {
    float part[kSlotsInFlight];
#pragma unroll
    for (int j = 0; j < kSlotsInFlight; ++j) {
      part[j] = 0.f;
      const int64_t s = s0 + j;
      if (s >= top_k) continue;
      const int32_t e = ids[t * top_k + s];
      if (e < 0 || e >= table.experts) continue;
      const auto* down = static_cast<const uint8_t*>(table.down[e]) + o * table.down_row_bytes;
      part[j] = lane_dot<D, SharedX>(down, table.down_scales ? table.down_scales[e] : nullptr, cols, o,
                                     rows + s * row_stride, table.intermediate, lane);
    }
#pragma unroll
    for (int j = 0; j < kSlotsInFlight; ++j) {
      const int64_t s = s0 + j;
      if (s >= top_k) break;
      const int32_t e = ids[t * top_k + s];
      if (e < 0 || e >= table.experts) continue;
      sum = __fadd_rn(sum, __fmul_rn(weights[t * top_k + s], detail::warp_sum(part[j])));
    }
  }
  if (lane == 0) out[t * hidden + o] = sum;
}

constexpr int kSlotWarps = 8;       // warps per block: slot s on warp s mod kSlotWarps
constexpr int kDownBlockRows = 8;   // output rows of one token per block (the int8 kernels)
// Rows of one slot whose loads a warp keeps in flight: measured (Nsight Compute, H100, Qwen3's down,
// µs per call) Q4_K 11.6 at 4 rows against 12.5 at 2; Q6_K (seven 2-byte loads a block) 14.8 at 2
// against 15.6 at 1, and at 4 ptxas spills 356 bytes a thread.
constexpr int kQ4kDownRowsInFlight = 4, kQ6kDownRowsInFlight = 2;
constexpr int kDownBlocksPerSm = 2;  // Qwen3's 2,048 rows are 256 blocks a token: one wave at 2 per SM
constexpr int kFloatDownBlocksPerSm = 3;
constexpr int64_t kMaxSlots = 64;

// The slot-parallel down projection's frame: a block takes BlockRows output rows of one token,
// each warp a slot's expert for all of them (its id and row pointer read once), InFlight rows'
// loads at a time; the dots meet in shared memory and each row's thread sums them with the
// routing weights in slot order. rows_part(first_row, nrows, pair, lane, parts) puts a lane's parts of
// rows first_row + r · down_row_bytes (r < nrows) against pair (t, s)'s activations in parts[r], or
// returns false where it cannot take them (rows not aligned for it): then row_part(row, pair, lane)
// takes them one at a time. Each row's dot is the one-row kernel's and so is the sum (the same bits
// as one warp per (row, slot)), but a block's warps stay busy through all its rows instead of one
// load round each: that kernel took 15 µs for Qwen3's 2,048 rows of 3 Q4_K blocks even from L2, in
// 5.2 waves of blocks that each waited out an id, a table entry and a row in turn.
template <int BlockRows, int InFlight, typename RowsPart, typename RowPart>
__device__ __forceinline__ void down_slots(const ExpertTable& table, const int32_t* ids, const float* weights,
                                           int64_t top_k, int64_t hidden, float* out, RowsPart rows_part,
                                           RowPart row_part) {
  __shared__ float dots[kMaxSlots][BlockRows];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = blockIdx.y, o0 = static_cast<int64_t>(blockIdx.x) * BlockRows;
  const int rows = static_cast<int>(hidden - o0 < BlockRows ? hidden - o0 : BlockRows);
  for (int64_t s = warp; s < top_k; s += kSlotWarps) {
    const int64_t pair = t * top_k + s;
    const int32_t e = ids[pair];
    if (e < 0 || e >= table.experts) continue;  // the whole warp; the sum below leaves the slot out
    const auto* first = static_cast<const uint8_t*>(table.down[e]) + o0 * table.down_row_bytes;
    for (int r0 = 0; r0 < rows; r0 += InFlight) {
      const int n = rows - r0 < InFlight ? rows - r0 : InFlight;
      float parts[InFlight] = {};
      if (rows_part(first + r0 * table.down_row_bytes, n, pair, lane, parts)) {
#pragma unroll
        for (int r = 0; r < InFlight; ++r) {
          const float dot = detail::warp_sum(parts[r]);
          if (lane == 0 && r < n) dots[s][r0 + r] = dot;
        }
        continue;
      }
      for (int r = 0; r < n; ++r) {
        const float dot = detail::warp_sum(row_part(first + (r0 + r) * table.down_row_bytes, pair, lane));
        if (lane == 0) dots[s][r0 + r] = dot;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  float sum = 0.f;
  for (int64_t s = 0; s < top_k; ++s) {
    const int32_t e = ids[t * top_k + s];
    if (e >= 0 && e < table.experts) sum = __fadd_rn(sum, __fmul_rn(weights[t * top_k + s], dots[s][threadIdx.x]));
  }
  out[t * hidden + o0 + threadIdx.x] = sum;
}

// out[t, o] as down_kernel computes it, bit for bit, with each (row, slot) dot on a warp of its own
// (a block per output row): a token's top_k down rows are read at once, where down_kernel's one warp
// per row read them kSlotsInFlight after kSlotsInFlight and could keep only a quarter of the GPU's
// warps busy (Qwen3's 2,048 rows). Rows read as LaneBlocks, no block scales, top_k <= kMaxSlots.
template <typename D>
__global__ void __launch_bounds__(kSlotWarps * 32, kFloatDownBlocksPerSm)
    down_slots_kernel(ExpertTable table, const int32_t* ids, const float* weights, int64_t top_k, const float* act,
                      int64_t hidden, float* out) {
  detail::wait_for_prior_grids();
  down_slots<1, 1>(
      table, ids, weights, top_k, hidden, out, [](const uint8_t*, int, int64_t, int, float (&)[1]) { return false; },
      [&](const uint8_t* row, int64_t pair, int lane) {
        float part = 0.f;
        detail::lane_row_dot<detail::LaneBlocks<D>, 1, 4>(row, 0, table.intermediate / 256, 1, lane,
                                                          act + pair * table.intermediate, 0, 1, &part);
        return part;
      });
}

// down_slots_kernel on the activations gate_up_q8_kernel quantised per 8 (act_q8), the rows' codes
// multiplied by dp4a, InFlight rows at once; Q4_K rows not 16-byte aligned take the float
// dot on act one at a time (Q6_K rows are 2-byte aligned wherever the float kernels take them).
template <DType T, int InFlight>
__global__ void __launch_bounds__(kSlotWarps * 32, kDownBlocksPerSm)
    down_slots_q8_kernel(ExpertTable table, const int32_t* ids, const float* weights, int64_t top_k, const float* act,
                         detail::Q8View<8> act_q8, int64_t hidden, float* out, bool prefetch) {
  // The block's down rows asked of L2 while the gate/up kernel before runs: that kernel passed its
  // own wait (it let this one start only then), so the router's ids two kernels back are final; they
  // are read from L2 (__ldcg), and the prefetch only hints — the rows are read after the wait.
  if (prefetch) {
    const int64_t t = blockIdx.y, o0 = static_cast<int64_t>(blockIdx.x) * kDownBlockRows;
    const int64_t rows = hidden - o0 < kDownBlockRows ? hidden - o0 : kDownBlockRows;
    for (int64_t s = threadIdx.x / 32; s < top_k; s += kSlotWarps) {
      const int32_t e = __ldcg(ids + t * top_k + s);
      if (e >= 0 && e < table.experts)
        detail::prefetch_l2(static_cast<const uint8_t*>(table.down[e]) + o0 * table.down_row_bytes,
                            rows * table.down_row_bytes, static_cast<int>(threadIdx.x % 32), 32);
    }
  }
  detail::wait_for_prior_grids();
  using Q = detail::Q8Lanes<T>;
  const int64_t blocks = table.intermediate / 256, stride = table.down_row_bytes;
  const auto aligned = [](const uint8_t* p) {
    return Q::kAlignment <= 2 || reinterpret_cast<uintptr_t>(p) % Q::kAlignment == 0;
  };
  down_slots<kDownBlockRows, InFlight>(
      table, ids, weights, top_k, hidden, out,
      [&](const uint8_t* first, int nrows, int64_t pair, int lane, float (&parts)[InFlight]) {
        if (!aligned(first) || stride % Q::kAlignment != 0) return false;
        const uint8_t* rows[InFlight];
#pragma unroll
        for (int r = 0; r < InFlight; ++r) rows[r] = first + r * stride;
        detail::lane_rows_dot_q8<Q, 4>(rows, nrows, 0, blocks, 1, lane, act_q8.at(pair * table.intermediate), parts);
        return true;
      },
      [&](const uint8_t* row, int64_t pair, int lane) {
        const int64_t at = pair * table.intermediate;
        if (aligned(row)) return detail::lane_row_dot_q8<Q, 4>(row, 0, blocks, 1, lane, act_q8.at(at));
        float part = 0.f;
        if constexpr (Q::kAlignment > 2)
          detail::lane_row_dot<detail::LaneBlocks<detail::Decoder<T>>, 1, 4>(row, 0, blocks, 1, lane, act + at, 0, 1,
                                                                             &part);
        return part;
      });
}

bool q8_type(DType t) { return t == DType::q4_k || t == DType::q6_k; }

// Where the down projections also take the integer products (after gate_up_q8_kernel).
bool down_q8_applies(const ExpertTable& table, int64_t top_k) {
  return q8_type(table.down_type) && table.down_scales == nullptr && table.intermediate % 256 == 0 &&
         top_k <= kMaxSlots;
}

}  // namespace

bool pairwise_aligned(const float* x, const float* act) noexcept {
  return reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(act) % 16 == 0;
}

bool pairwise_q8_applies(const ExpertTable& table, int64_t hidden) noexcept {
  return q8_type(table.gate_type) && table.up_type == table.gate_type && table.gate_scales == nullptr &&
         table.up_scales == nullptr && hidden % 256 == 0 && table.intermediate % 8 == 0 &&
         detail::q8_bytes<32>(hidden) <= kSharedBytes;
}

int64_t pairwise_act_floats(const ExpertTable& table, int64_t hidden, int64_t pairs, bool quantised_x) noexcept {
  const int64_t floats = pairs * table.intermediate;
  if (!quantised_x || !pairwise_q8_applies(table, hidden)) return floats;
  return floats + (detail::q8_bytes<8>(floats) + 3) / 4;
}

void moe_by_pairs(Stream& stream, const ExpertTable& table, const float* x, int64_t tokens, int64_t hidden,
                  const int32_t* ids, const float* weights, int64_t top_k, float* act, int64_t act_floats,
                  float* out, bool quantised_x) {
  if (tokens <= 0) return;
  if (const int64_t needed = pairwise_act_floats(table, hidden, tokens * top_k, quantised_x); act_floats < needed)
    throw Error(ErrorKind::internal, text("cuda::moe_by_pairs: act holds ", act_floats, " floats, ", needed,
                                          " needed (pairwise_act_floats)"));
  if (table.gate_type != table.up_type)
    throw Error(ErrorKind::internal, "cuda::moe_by_pairs: the experts' gate and up differ in type");
  if (!pairwise_aligned(x, act))
    throw Error(ErrorKind::internal, "cuda::moe_by_pairs: x and act must be 16-byte aligned");
  const dim3 gate_grid(detail::grid_dim((table.intermediate + kGateWarps - 1) / kGateWarps, "moe gate/up"),
                       detail::grid_dim(tokens * top_k, "moe gate/up (pairs)", 65535));
  const dim3 down_grid(detail::grid_dim((hidden + kWarps - 1) / kWarps, "moe down"),
                       detail::grid_dim(tokens, "moe down (tokens)", 65535));
  const dim3 down_slots_grid(detail::grid_dim((hidden + kDownBlockRows - 1) / kDownBlockRows, "moe down"),
                             detail::grid_dim(tokens, "moe down (tokens)", 65535));
  const auto x_bytes = static_cast<size_t>(padded_floats(hidden) * 4);
  const auto act_bytes = static_cast<size_t>(top_k * padded_floats(table.intermediate) * 4);
  const bool q8 = quantised_x && pairwise_q8_applies(table, hidden);
  const bool down_q8 = q8 && down_q8_applies(table, top_k);
  // The down kernel's codes follow act's floats (pairwise_act_floats; 16-byte aligned: intermediate is
  // a multiple of 256 there).
  const int64_t act_values = tokens * top_k * table.intermediate;
  const auto act_q8 = detail::q8_arrays<8>(act + act_values, act_values);
  if (q8) {
    const auto shared = static_cast<size_t>(detail::q8_bytes<32>(hidden));
    detail::launch_dependent(stream, "moe gate/up (int8 products)",
                             table.gate_type == DType::q4_k ? gate_up_q8_kernel<DType::q4_k> : gate_up_q8_kernel<DType::q6_k>,
                             gate_grid, kGateWarps * 32, shared, table, ids, top_k, x, hidden, act, act_q8, down_q8);
  }
  const bool gate_known = q8 || dispatch_weight_type(table.gate_type, [&](auto decoder) {
    using D = decltype(decoder);
    if (x_bytes <= kSharedBytes && !detail::LaneBlocks<D>::available)
      gate_up_kernel<D, true><<<gate_grid, kGateWarps * 32, x_bytes, detail::native(stream)>>>(table, ids, top_k, x,
                                                                                           hidden, act);
    else
      gate_up_kernel<D, false><<<gate_grid, kGateWarps * 32, 0, detail::native(stream)>>>(table, ids, top_k, x, hidden,
                                                                                      act);
  });
  if (!gate_known) throw Error(ErrorKind::unsupported, text("cuda::moe_by_pairs: no kernel for ", dtype_name(table.gate_type)));
  detail::check_launch("moe gate/up");
  if (down_q8) {
    detail::launch_dependent(
        stream, "moe down (int8 products)",
        table.down_type == DType::q4_k ? down_slots_q8_kernel<DType::q4_k, kQ4kDownRowsInFlight>
                                       : down_slots_q8_kernel<DType::q6_k, kQ6kDownRowsInFlight>,
        down_slots_grid, kSlotWarps * 32, 0, table, ids, weights, top_k, act, act_q8.view(), hidden, out,
        stream.prefetch_ahead());
    return;
  }
  const bool down_known = dispatch_weight_type(table.down_type, [&](auto decoder) {
    using D = decltype(decoder);
    if constexpr (detail::LaneBlocks<D>::available) {
      if (table.down_scales == nullptr && top_k <= kMaxSlots) {
        const dim3 grid(detail::grid_dim(hidden, "moe down"), detail::grid_dim(tokens, "moe down (tokens)", 65535));
        detail::launch_dependent(stream, "moe down", down_slots_kernel<D>, grid, kSlotWarps * 32, 0, table,
                                 ids, weights, top_k, act, hidden, out);
        return;
      }
    }
    if (act_bytes <= kSharedBytes && !detail::LaneBlocks<D>::available)
      down_kernel<D, true><<<down_grid, kWarps * 32, act_bytes, detail::native(stream)>>>(table, ids, weights, top_k,
                                                                                          act, hidden, out);
    else
      down_kernel<D, false><<<down_grid, kWarps * 32, 0, detail::native(stream)>>>(table, ids, weights, top_k, act,
                                                                                   hidden, out);
  });
  if (!down_known) throw Error(ErrorKind::unsupported, text("cuda::moe_by_pairs: no kernel for ", dtype_name(table.down_type)));
  detail::check_launch("moe down");
}

}  // namespace tandem::cuda
