#pragma once
// The pieces the tensor-core kernels share (linear_tensor_cores.cu, moe_grouped.cu): a block of four
// warps computes 64 rows of activations × 64 weight rows, stepping through the inputs 64 at a time;
// each step stages the activations and the weight rows' two 32-value chunks (dequantised by
// dequant.cuh's decoders, one chunk per thread, FP8 block scales applied) in shared memory and
// multiplies them with TF32 WMMA fragments. (Steps of 32, where half the threads dequantised and the
// rest waited at the barrier, took 620 µs for 512 tokens × 4096 × 2048 Q4_K on the H200.)
// Each float is split into a TF32 part and a TF32 remainder and three products are summed (3xTF32),
// so results keep float32 accuracy.
#include <mma.h>

#include <cstdint>

#include "dequant.cuh"
#include "staged_rows.cuh"

namespace tandem::cuda::detail::tc {

using namespace nvcuda;

constexpr int kRows = 64, kOut = 64, kStep = 64;
constexpr int kLd = kStep + 4;     // shared row stride (floats) of an operand tile
constexpr int kLdOut = kOut + 4;   // shared row stride of a result tile
constexpr int kThreads = 128;      // 4 warps, each 32 rows × 32 outputs
constexpr int kOperandFloats = kRows * kLd;  // one operand tile (activations or one weight)
constexpr int kResultFloats = kRows * kLdOut;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// A weight matrix as a block reads it: rows of row_bytes stored bytes, optional FP8 block scales.
struct WeightRows {
  const uint8_t* data;
  int64_t row_bytes, out_features, in_features;
  const float* scales;  // [ceil(out/128), ceil(in/128)] or null
};

template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& big, Frag& small) {
#pragma unroll
  for (int i = 0; i < big.num_elements; ++i) {
    const float v = big.x[i];
    const float b = wmma::__float_to_tf32(v);
    big.x[i] = b;
    small.x[i] = wmma::__float_to_tf32(v - b);
  }
}

__device__ __forceinline__ void zero(FragC (&acc)[2][2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
}

// xs[m][0, kStep) = a[m · in + k0, +kStep) for m < rows (16-byte aligned rows), zeros past them.
__device__ __forceinline__ void stage_activations(const float* a, int64_t in, int64_t rows, int64_t k0, float* xs) {
  static_assert(kThreads == 2 * kRows && kStep == 64);
  const int token = threadIdx.x / 2, half = threadIdx.x % 2;
  float* dst = xs + token * kLd + half * 32;
  if (token < rows) {
    const float4* src = reinterpret_cast<const float4*>(a + token * in + k0 + half * 32);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float4 v = src[i];
      dst[4 * i] = v.x;
      dst[4 * i + 1] = v.y;
      dst[4 * i + 2] = v.z;
      dst[4 * i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 32; ++i) dst[i] = 0.f;
  }
}

// ws[n][0, kStep) = W[o0 + n][k0, +kStep) dequantised, a 32-value chunk per thread; zeros past the rows.
template <typename D>
__device__ __forceinline__ void stage_weights(const WeightRows& w, int64_t o0, int64_t k0, float* ws) {
  static_assert(kThreads == 2 * kOut && kStep == 64);
  const int n = threadIdx.x % kOut, half = threadIdx.x / kOut;
  const int64_t k = k0 + 32 * half;
  float* dst = ws + n * kLd + 32 * half;
  const int64_t o = o0 + n;
  if (o < w.out_features) {
    float v[32];
    D::chunk(w.data + o * w.row_bytes, k / 32, v);
    if (w.scales != nullptr) {
      const float s = w.scales[(o / kFp8Block) * ((w.in_features + kFp8Block - 1) / kFp8Block) + k / kFp8Block];
#pragma unroll
      for (int i = 0; i < 32; ++i) v[i] = __fmul_rn(v[i], s);
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) dst[i] = v[i];
  } else {
#pragma unroll
    for (int i = 0; i < 32; ++i) dst[i] = 0.f;
  }
}

// acc += the staged activations × the staged weights over one kStep-input step (this warp's 32 × 32).
__device__ __forceinline__ void multiply_step(const float* xs, const float* ws, FragC (&acc)[2][2]) {
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
  for (int kk = 0; kk < kStep; kk += 8) {
    FragA a_big[2], a_small[2];
    FragB b_big[2], b_small[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      wmma::load_matrix_sync(a_big[i], xs + (wm * 32 + i * 16) * kLd + kk, kLd);
      split_tf32(a_big[i], a_small[i]);
      wmma::load_matrix_sync(b_big[i], ws + (wn * 32 + i * 16) * kLd + kk, kLd);
      split_tf32(b_big[i], b_small[i]);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::mma_sync(acc[i][j], a_small[i], b_big[j], acc[i][j]);
        wmma::mma_sync(acc[i][j], a_big[i], b_small[j], acc[i][j]);
        wmma::mma_sync(acc[i][j], a_big[i], b_big[j], acc[i][j]);
      }
  }
}

// The tensor cores add into their float32 accumulators with truncation, a bias that grows with the
// number of steps (2.5e-4 relative over 12,800 inputs on an H200): the kernels accumulate kPromoteSteps
// steps in the fragments, then add them into float32 registers rounded to nearest (as DeepSeek-V3's FP8
// GEMMs promote their partial sums), which keeps long inputs within float32 rounding.
constexpr int kPromoteSteps = 256 / kStep;
__device__ __forceinline__ void promote(FragC (&part)[2][2], FragC (&total)[2][2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < part[i][j].num_elements; ++e) total[i][j].x[e] += part[i][j].x[e];
      wmma::fill_fragment(part[i][j], 0.f);
    }
}

// This warp's accumulators into the result tile out[m][n] (kLdOut apart); the caller syncs.
__device__ __forceinline__ void store(const FragC (&acc)[2][2], float* out) {
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(out + (wm * 32 + i * 16) * kLdOut + wn * 32 + j * 16, acc[i][j], kLdOut,
                              wmma::mem_row_major);
}

}  // namespace tandem::cuda::detail::tc
