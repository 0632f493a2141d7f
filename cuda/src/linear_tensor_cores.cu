// Linear layers of many tokens (prefill) on the tensor cores, so each weight row is read once per 64
// tokens instead of once per 8 as in the GEMV kernel: bf16 tiles of 64 tokens × 128 output features
// (bf16_tiles.cuh), or float32-accurate 3xTF32 tiles of 64 × 64 (tensor_core_tiles.cuh).
#include "bf16_tiles.cuh"
#include "launch.cuh"
#include "tensor_core_linear.cuh"
#include "tensor_core_tiles.cuh"

namespace tandem::cuda::detail {
namespace {

template <typename D>
__global__ void __launch_bounds__(tc::kThreads) linear_tc_kernel(tc::WeightRows w, const float* bias, const float* x,
                                                                 int64_t rows, float* y) {
  constexpr int kShared = 2 * tc::kOperandFloats > tc::kResultFloats ? 2 * tc::kOperandFloats : tc::kResultFloats;
  __shared__ __align__(32) float shared[kShared];
  float* xs = shared;
  float* ws = shared + tc::kOperandFloats;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * tc::kOut, r0 = static_cast<int64_t>(blockIdx.y) * tc::kRows;
  const float* a = x + r0 * w.in_features;
  const int64_t n = rows - r0 < tc::kRows ? rows - r0 : tc::kRows;
  tc::FragC acc[2][2], part[2][2];
  tc::zero(acc);
  tc::zero(part);
  int steps = 0;
  for (int64_t k0 = 0; k0 < w.in_features; k0 += tc::kStep) {
    tc::stage_activations(a, w.in_features, n, k0, xs);
    tc::stage_weights<D>(w, o0, k0, ws);
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
    if (m < n && o < w.out_features) y[(r0 + m) * w.out_features + o] = shared[m * tc::kLdOut + c] + (bias ? bias[o] : 0.f);
  }
}

template <typename D>
__global__ void __launch_bounds__(bf16::kThreads) linear_bf16_kernel(tc::WeightRows w, const float* bias,
                                                                     const float* x, int64_t rows, float* y) {
  extern __shared__ __align__(128) float shared[];  // bf16::shared_bytes<D>(), opted in
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * bf16::kCols, r0 = static_cast<int64_t>(blockIdx.y) * bf16::kRows;
  const int64_t n = rows - r0 < bf16::kRows ? rows - r0 : bf16::kRows;
  const bf16::MatrixRows row_of{w.data, w.row_bytes, w.out_features, w.in_features, o0, w.scales};
  bf16::multiply_tile<D>(x + r0 * w.in_features, w.in_features, n, row_of, reinterpret_cast<unsigned char*>(shared));
  const float* out = shared;
  for (int e = threadIdx.x; e < bf16::kRows * bf16::kCols; e += bf16::kThreads) {
    const int m = e / bf16::kCols, c = e % bf16::kCols;
    const int64_t o = o0 + c;
    if (m < n && o < w.out_features) y[(r0 + m) * w.out_features + o] = out[m * bf16::kLdOut + c] + (bias ? bias[o] : 0.f);
  }
}

}  // namespace

bool tensor_core_linear_supported(const DeviceWeight& w, const float* x, int64_t rows) {
  return rows >= kTensorCoreMinRows && w.in_features % tc::kStep == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void tensor_core_linear(Stream& stream, const DeviceWeight& w, int64_t row_bytes, const float* x, int64_t rows,
                        float* y, TensorCoreMath math) {
  const tc::WeightRows rows_of{static_cast<const uint8_t*>(w.data), row_bytes, w.out_features, w.in_features,
                               w.block_scales};
  if (math == TensorCoreMath::bf16) {
    const dim3 grid(grid_dim((w.out_features + bf16::kCols - 1) / bf16::kCols, "linear (bf16 tiles)"),
                    grid_dim((rows + bf16::kRows - 1) / bf16::kRows, "linear (bf16 tiles, token tiles)", 65535));
    const bool known = dispatch_weight_type(w.type, [&](auto decoder) {
      using D = decltype(decoder);
      opt_in_shared_memory(linear_bf16_kernel<D>, bf16::shared_bytes<D>(), "linear (bf16 tiles, shared memory opt-in)");
      linear_bf16_kernel<D><<<grid, bf16::kThreads, bf16::shared_bytes<D>(), native(stream)>>>(rows_of, w.bias, x, rows, y);
    });
    if (!known) throw Error(ErrorKind::unsupported, text("cuda::linear (tensor cores): no kernel for ", dtype_name(w.type)));
    check_launch("linear (bf16 tiles)");
    return;
  }
  const dim3 grid(grid_dim((w.out_features + tc::kOut - 1) / tc::kOut, "linear (tensor cores)"),
                  grid_dim((rows + tc::kRows - 1) / tc::kRows, "linear (tensor cores, token tiles)", 65535));
  const bool known = dispatch_weight_type(w.type, [&](auto decoder) {
    linear_tc_kernel<decltype(decoder)><<<grid, tc::kThreads, 0, native(stream)>>>(rows_of, w.bias, x, rows, y);
  });
  if (!known) throw Error(ErrorKind::unsupported, text("cuda::linear (tensor cores): no kernel for ", dtype_name(w.type)));
  check_launch("linear (tensor cores)");
}

}  // namespace tandem::cuda::detail
