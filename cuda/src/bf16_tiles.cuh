#pragma once
// The bf16 tensor-core tiles of prefill (linear_tensor_cores.cu, moe_grouped.cu): a block of eight
// warps multiplies 64 activation rows by 128 weight rows, stepping through the inputs 64 at a time.
// The weights' raw bytes are copied into shared memory a block-type segment at a time (cp.async,
// coalesced; a K-quant's 256-value block spans four steps) well ahead of their use, then decoded
// there by dequant.cuh's decoders (a 32-value chunk per thread) into bf16; activations are loaded a
// step ahead into registers and rounded to bf16; two operand stages let one be staged while the
// tensor cores (mma.sync m16n8k16 bf16, float32 accumulators) work on the other, and 16-row halves
// holding no activation row skip them.
// Error: each operand rounded to 8 bits of mantissa, about 1.6e-3 of an output's RMS with random
// signs (the accumulators' truncation, 2.5e-4 over 12,800 inputs, is not worth promoting against);
// the float32-accurate 3xTF32 tiles (tensor_core_tiles.cuh) stay for callers who need that.
#include <cuda_bf16.h>

#include <cstdint>

#include "dequant.cuh"
#include "mma.cuh"
#include "staged_rows.cuh"

namespace tandem::cuda::detail::bf16 {

constexpr int kRows = 64, kCols = 128, kStep = 64;
constexpr int kThreads = 256;      // 8 warps: 2 along the rows × 4 along the weight rows, 32 × 32 each
constexpr int kLd = kStep + 8;     // shared row stride in bf16 values (144 bytes: ldmatrix rows in distinct banks)
constexpr int kLdOut = kCols + 4;  // float row stride of the result tile
constexpr int kStageValues = (kRows + kCols) * kLd;
static_assert(2 * kStageValues * 2 >= kRows * kLdOut * 4, "the result tile fits in the operand stages");

// A weight row as the staging reads it: its stored bytes and, for FP8, the row's 128-input block
// scales (null otherwise). A null row stages zeros.
struct RowRef {
  const uint8_t* data;
  const float* scales;
};

using Accumulators = float[2][4][4];

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A weight row's stored bytes for one step's kStep inputs, as the raw stage copies them: the whole
// block holding them (K-quants, IQ4_XS: 256 values) or the kStep values' blocks (or plain values).
template <typename D>
struct Segment {
  static constexpr int kValues = D::block_elems >= kStep ? D::block_elems : kStep;
  static constexpr int kBytes = kValues / D::block_elems * D::block_bytes;
  // Copied in 4-byte words from the word holding the first byte (Q6_K's 210-byte blocks start at
  // 2 mod 4; the other types' segments are whole words at word-aligned offsets of device buffers),
  // so a row takes up to this many words; rows an odd number of words apart in shared memory, so
  // the lanes of a warp (consecutive rows) decode from distinct banks.
  static constexpr int kWords = (kBytes + (kBytes % 4 == 0 ? 0 : 3) + 3) / 4;
  static constexpr int kStrideWords = kWords % 2 == 1 ? kWords : kWords + 1;
  static constexpr size_t kBufferBytes = size_t{kCols} * kStrideWords * 4;
};

// Raw weight stages in flight: a K-quant's segment (a 256-value block) spans four steps, so two
// stages let each segment's copy start four steps before it is decoded; plain types' segments are
// one step, so three stages keep two steps' copies in flight.
template <typename D>
inline constexpr int kRawStages = Segment<D>::kValues > kStep ? 2 : 3;

// Shared memory multiply_tile<D> needs: two bf16 operand stages and kRawStages<D> raw weight
// stages (the result tile reuses the start).
template <typename D>
constexpr size_t shared_bytes() {
  return 2 * kStageValues * sizeof(__nv_bfloat16) + kRawStages<D> * Segment<D>::kBufferBytes;
}

// lanes on consecutive words (coalesced; each thread decoding its own row from global memory read
// 32 rows per load instruction). A last word that would reach past the segment (Q6_K) is read byte
// by byte instead, so nothing past the weight is read. The caller commits, waits and syncs.
template <typename D, typename RowOf>
__device__ __forceinline__ void copy_raw_weights(const RowOf& row_of, int64_t k0, uint32_t* raw) {
  using S = Segment<D>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t offset = k0 / S::kValues * S::kBytes;
  for (int n = warp; n < kCols; n += kThreads / 32) {
    const RowRef r = row_of(n);
    if (r.data == nullptr) continue;
    const uint8_t* start = r.data + offset;
    const int shift = static_cast<int>(reinterpret_cast<uintptr_t>(start) % 4);
    const uint8_t* first = start - shift;
    const int whole = (shift + S::kBytes) / 4, tail = (shift + S::kBytes) % 4;
    for (int w = lane; w < whole; w += 32) copy_async4(raw + n * S::kStrideWords + w, first + 4 * w);
    if (tail != 0 && lane == 0) {
      uint32_t v = 0;
      for (int b = 0; b < tail; ++b) v |= static_cast<uint32_t>(first[4 * whole + b]) << (8 * b);
      raw[n * S::kStrideWords + whole] = v;
    }
  }
}

// ws[n][0, kStep) = the step's values of row_of(n) in bf16, decoded from the raw stage: a 32-value
// chunk per thread (dequant.cuh's decoders), FP8 block scales applied; zeros past the rows.
template <typename D, typename RowOf>
__device__ __forceinline__ void decode_weights(const RowOf& row_of, int64_t k0, const uint32_t* raw,
                                               __nv_bfloat16* ws) {
  using S = Segment<D>;
  static_assert(kThreads == 2 * kCols && kStep == 64);
  const int n = threadIdx.x % kCols, half = threadIdx.x / kCols;
  const int64_t k = k0 + 32 * half;
  uint4* dst = reinterpret_cast<uint4*>(ws + n * kLd + 32 * half);
  const RowRef r = row_of(n);
  if (r.data != nullptr) {
    const int64_t segment = k0 / S::kValues;
    const int shift = static_cast<int>(reinterpret_cast<uintptr_t>(r.data + segment * S::kBytes) % 4);
    const auto* bytes = reinterpret_cast<const uint8_t*>(raw + n * S::kStrideWords) + shift;
    float v[32];
    D::chunk(bytes, (k - segment * S::kValues) / 32, v);
    if (r.scales != nullptr) {
      const float s = r.scales[k / kFp8Block];
#pragma unroll
      for (int i = 0; i < 32; ++i) v[i] = __fmul_rn(v[i], s);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
      dst[i] = make_uint4(pack(v[8 * i], v[8 * i + 1]), pack(v[8 * i + 2], v[8 * i + 3]),
                          pack(v[8 * i + 4], v[8 * i + 5]), pack(v[8 * i + 6], v[8 * i + 7]));
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[i] = make_uint4(0, 0, 0, 0);
  }
}

// The step's activations: 16 threads per row, each 4 consecutive floats (rows of a warp load in
// whole cache lines), 4 passes of 16 rows. Loaded into registers before the current step's products
// and stored (rounded to bf16) after them, so the loads' latency hides behind the tensor cores.
constexpr int kActivationPasses = kRows * kStep / 4 / kThreads;
struct ActivationRegisters {
  float4 v[kActivationPasses];
};

__device__ __forceinline__ void load_activations(const float* a, int64_t in, int64_t rows, int64_t k0,
                                                 ActivationRegisters& x) {
  const int piece = threadIdx.x % 16;
#pragma unroll
  for (int p = 0; p < kActivationPasses; ++p) {
    const int m = threadIdx.x / 16 + 16 * p;
    x.v[p] = m < rows ? *reinterpret_cast<const float4*>(a + m * in + k0 + 4 * piece) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

__device__ __forceinline__ void store_activations(const ActivationRegisters& x, __nv_bfloat16* xs) {
  const int piece = threadIdx.x % 16;
#pragma unroll
  for (int p = 0; p < kActivationPasses; ++p) {
    const int m = threadIdx.x / 16 + 16 * p;
    *reinterpret_cast<uint2*>(xs + m * kLd + 4 * piece) = make_uint2(pack(x.v[p].x, x.v[p].y), pack(x.v[p].z, x.v[p].w));
  }
}

// acc += this warp's 32 rows × 32 weight rows of the staged step; 16-row halves at or past `rows`
// (zeros, never stored) are skipped, so a tile of few pairs costs the tensor cores little.
__device__ __forceinline__ void multiply_step(const __nv_bfloat16* xs, const __nv_bfloat16* ws, int64_t rows,
                                              Accumulators& acc) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4;
  const int halves = rows <= wm * 32 ? 0 : rows <= wm * 32 + 16 ? 1 : 2;
  if (halves == 0) return;
#pragma unroll
  for (int kk = 0; kk < kStep; kk += 16) {
    uint32_t a[2][4], b[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (i < halves) ldmatrix_x4(xs + (wm * 32 + i * 16 + lane % 16) * kLd + kk + (lane / 16) * 8, a[i]);
#pragma unroll
    for (int p = 0; p < 2; ++p)
      ldmatrix_x4(ws + (wn * 32 + p * 16 + lane % 8 + (lane / 16) * 8) * kLd + kk + ((lane / 8) % 2) * 8, b[p]);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (i < halves)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], a[i], b[j / 2][(j % 2) * 2], b[j / 2][(j % 2) * 2 + 1]);
  }
}

// The whole product of the tile: out[m][n] (kLdOut apart, in `shared`) = Σ_k a[m][k] · row_of(n)[k]
// over `in` inputs (a multiple of kStep), for m < rows. `shared` holds shared_bytes<D>(); every
// thread of the block calls this and the result is complete when it returns. The weights' raw bytes
// are copied a segment at a time (one commit group each), kRawStages<D> − 1 segments ahead; at
// each segment's first step the block waits for its copy and starts the copy of the segment
// kRawStages − 1 later into the stage the previous segment used. Per step s: the next step's
// activations are loaded into registers, the tensor cores multiply step s, then the next step's
// activations and weights are staged in bf16.
template <typename D, typename RowOf>
__device__ __forceinline__ void multiply_tile(const float* a, int64_t in, int64_t rows, const RowOf& row_of,
                                              unsigned char* shared) {
  using S = Segment<D>;
  constexpr int kRaw = kRawStages<D>;
  auto* stages = reinterpret_cast<__nv_bfloat16*>(shared);
  auto* raw = reinterpret_cast<uint32_t*>(shared + 2 * kStageValues * sizeof(__nv_bfloat16));
  constexpr int kRawWords = kCols * S::kStrideWords;
  Accumulators acc;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  const int64_t steps = in / kStep;
  const int64_t segments = (in + S::kValues - 1) / S::kValues;
  // Waits for segment g's copy (every thread's), then starts segment g + kRaw − 1's: one commit group
  // per segment, empty past the end, so kRaw − 2 groups are younger than g's when it is awaited.
  const auto segment_ready = [&](int64_t g) {
    wait_copies<kRaw - 2>();
    __syncthreads();
    if (g + kRaw - 1 < segments) copy_raw_weights<D>(row_of, (g + kRaw - 1) * S::kValues, raw + ((g + kRaw - 1) % kRaw) * kRawWords);
    commit_copies();
  };
  ActivationRegisters x;
  for (int g = 0; g < kRaw - 1; ++g) {
    if (g < segments) copy_raw_weights<D>(row_of, g * S::kValues, raw + g * kRawWords);
    commit_copies();
  }
  load_activations(a, in, rows, 0, x);
  store_activations(x, stages);
  segment_ready(0);
  decode_weights<D>(row_of, 0, raw, stages + kRows * kLd);
  __syncthreads();
  for (int64_t s = 0; s < steps; ++s) {
    const bool next = s + 1 < steps;
    __nv_bfloat16* current = stages + (s % 2) * kStageValues;
    __nv_bfloat16* following = stages + ((s + 1) % 2) * kStageValues;
    if (next) load_activations(a, in, rows, (s + 1) * kStep, x);
    multiply_step(current, current + kRows * kLd, rows, acc);
    if (next) {
      const int64_t k1 = (s + 1) * kStep, g1 = k1 / S::kValues;
      store_activations(x, following);
      if (k1 % S::kValues == 0) segment_ready(g1);  // every warp is past segment g1 − 1's decodes
      decode_weights<D>(row_of, k1, raw + (g1 % kRaw) * kRawWords, following + kRows * kLd);
    }
    __syncthreads();
  }
  wait_copies<0>();  // no copy outlives the block's use of shared memory
  float* out = reinterpret_cast<float*>(shared);  // the operand stages are free after the last barrier
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = wm * 32 + i * 16 + g, n = wn * 32 + j * 8 + 2 * t;
      out[m * kLdOut + n] = acc[i][j][0];
      out[m * kLdOut + n + 1] = acc[i][j][1];
      out[(m + 8) * kLdOut + n] = acc[i][j][2];
      out[(m + 8) * kLdOut + n + 1] = acc[i][j][3];
    }
  __syncthreads();
}

// Rows [o0, o0 + kCols) of a weight matrix, as multiply_tile reads them.
struct MatrixRows {
  const uint8_t* data;
  int64_t row_bytes, out_features, in_features, o0;
  const float* scales;  // FP8 block scales [ceil(out/128), ceil(in/128)] or null
  __device__ __forceinline__ RowRef operator()(int n) const {
    const int64_t o = o0 + n;
    if (o >= out_features) return {nullptr, nullptr};
    return {data + o * row_bytes,
            scales ? scales + (o / kFp8Block) * ((in_features + kFp8Block - 1) / kFp8Block) : nullptr};
  }
};

}  // namespace tandem::cuda::detail::bf16
