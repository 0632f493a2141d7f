// Linear layers of many tokens (prefill) on the tensor cores: a block computes 64 tokens × 64 output
// features, stepping through the inputs 32 at a time: the tokens' activations and the weight rows'
// 32-value chunk (dequantised in registers by dequant.cuh's decoders, FP8 block scales applied) go to
// shared memory, then four warps multiply them with TF32 WMMA fragments. Each float is split into a
// TF32 part and a TF32 remainder and three products are summed (the "3xTF32" scheme), so the result
// keeps float32 accuracy (~1e-6 relative) while the weight is read once per 64 tokens instead of once
// per 8 as in the GEMV kernel.
#include <mma.h>

#include "dequant.cuh"
#include "launch.cuh"
#include "staged_rows.cuh"
#include "tensor_core_linear.cuh"

namespace tandem::cuda::detail {
namespace {

using namespace nvcuda;

constexpr int kTileTokens = 64, kTileOut = 64, kStepIn = 32;
constexpr int kLd = kStepIn + 4;      // shared row stride (floats) of the operand tiles
constexpr int kLdOut = kTileOut + 4;  // shared row stride of the result tile
constexpr int kThreads = 128;         // 4 warps, each 32 tokens × 32 outputs

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

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

template <typename D>
__global__ void __launch_bounds__(kThreads) tf32x3_kernel(const uint8_t* weight, int64_t row_bytes,
                                                          int64_t out_features, int64_t in_features,
                                                          const float* block_scales, int64_t scale_cols,
                                                          const float* bias, const float* x, int64_t rows, float* y) {
  constexpr int kOperandFloats = (kTileTokens + kTileOut) * kLd;
  constexpr int kSharedFloats = kOperandFloats > kTileTokens * kLdOut ? kOperandFloats : kTileTokens * kLdOut;
  __shared__ __align__(32) float shared[kSharedFloats];
  float* xs = shared;                     // [kTileTokens][kLd]
  float* ws = shared + kTileTokens * kLd;  // [kTileOut][kLd]: row n holds output n's inputs
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kTileOut, r0 = static_cast<int64_t>(blockIdx.y) * kTileTokens;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
  FragC acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < in_features; k0 += kStepIn) {
    {  // activations: thread tid loads 16 values of token tid / 2
      const int token = tid / 2, half = tid % 2;
      float* dst = xs + token * kLd + half * 16;
      if (r0 + token < rows) {
        const float4* src = reinterpret_cast<const float4*>(x + (r0 + token) * in_features + k0 + half * 16);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 v = src[i];
          dst[4 * i] = v.x;
          dst[4 * i + 1] = v.y;
          dst[4 * i + 2] = v.z;
          dst[4 * i + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = 0.f;
      }
    }
    if (tid < kTileOut) {  // weights: thread tid decodes output o0 + tid's chunk
      float* dst = ws + tid * kLd;
      const int64_t o = o0 + tid;
      if (o < out_features) {
        float v[32];
        D::chunk(weight + o * row_bytes, k0 / 32, v);
        const float s = block_scales != nullptr ? block_scales[(o / kFp8Block) * scale_cols + k0 / kFp8Block] : 1.f;
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = block_scales != nullptr ? __fmul_rn(v[i], s) : v[i];
      } else {
#pragma unroll
        for (int i = 0; i < 32; ++i) dst[i] = 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStepIn; kk += 8) {
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
    __syncthreads();
  }
  float* out_tile = shared;  // [kTileTokens][kLdOut]
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(out_tile + (wm * 32 + i * 16) * kLdOut + wn * 32 + j * 16, acc[i][j], kLdOut,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < kTileTokens * kTileOut; e += kThreads) {
    const int m = e / kTileOut, n = e % kTileOut;
    const int64_t r = r0 + m, o = o0 + n;
    if (r < rows && o < out_features) y[r * out_features + o] = out_tile[m * kLdOut + n] + (bias ? bias[o] : 0.f);
  }
}

}  // namespace

bool tensor_core_linear_supported(const DeviceWeight& w, const float* x, int64_t rows) {
  return rows >= kTensorCoreMinRows && w.in_features % kStepIn == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void tensor_core_linear(Stream& stream, const DeviceWeight& w, int64_t row_bytes, const float* x, int64_t rows,
                        float* y) {
  const dim3 grid(grid_dim((w.out_features + kTileOut - 1) / kTileOut, "linear (tensor cores)"),
                  grid_dim((rows + kTileTokens - 1) / kTileTokens, "linear (tensor cores, token tiles)", 65535));
  const int64_t scale_cols = (w.in_features + kFp8Block - 1) / kFp8Block;
  const bool known = dispatch_weight_type(w.type, [&](auto decoder) {
    tf32x3_kernel<decltype(decoder)><<<grid, kThreads, 0, native(stream)>>>(
        static_cast<const uint8_t*>(w.data), row_bytes, w.out_features, w.in_features, w.block_scales, scale_cols,
        w.bias, x, rows, y);
  });
  if (!known) throw Error(ErrorKind::unsupported, text("cuda::linear (tensor cores): no kernel for ", dtype_name(w.type)));
  check_launch("linear (tensor cores)");
}

}  // namespace tandem::cuda::detail
