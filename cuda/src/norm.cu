// RMSNorm, as ops/norm.cpp: the sum of squares in double, the scale rounded to float once.
#include <algorithm>

#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rms_norm_kernel(const float* x, const float* weight, int64_t dim, int64_t stride, double eps,
                                float* out) {
  __shared__ double partial[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * stride;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * stride;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += static_cast<double>(row[i]) * row[i];
  sum = detail::block_sum(sum, partial);
  const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(dim) + eps));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = __fmul_rn(__fmul_rn(row[i], inv), weight[i]);
}

// Rows of up to kValuesPerThread · 1024 values: each thread's values and weights are loaded into
// registers before the sum, so the row costs one memory latency instead of one per loop step (the
// loop above took 8.5 µs for a 2,048-value decode row on the H200), and is read once.
constexpr int kValuesPerThread = 8;
constexpr int64_t kMaxRegisterDim = kValuesPerThread * 1024;

// With `delta`: x += delta first (x is then the residual stream, written back), as add_rms_norm.
__global__ void rms_norm_registers_kernel(const float* x, const float* delta, float* sum_out, const float* weight,
                                          int64_t dim, int64_t stride, double eps, float* out) {
  detail::wait_for_prior_grids();
  __shared__ double partial[32];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * stride;
  const float* row = x + first;
  float* dst = out + first;
  float v[kValuesPerThread], w[kValuesPerThread];
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    v[k] = i < dim ? row[i] : 0.f;
    w[k] = i < dim ? weight[i] : 0.f;
    if (delta != nullptr && i < dim) {
      v[k] = v[k] + delta[first + i];
      sum_out[first + i] = v[k];
    }
  }
  double sum = 0;
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) sum += static_cast<double>(v[k]) * v[k];
  sum = detail::block_sum(sum, partial);
  const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(dim) + eps));
#pragma unroll
  for (int k = 0; k < kValuesPerThread; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < dim) dst[i] = __fmul_rn(__fmul_rn(v[k], inv), w[k]);
  }
}

unsigned register_threads(int64_t dim) {
  const int64_t needed = (dim + kValuesPerThread - 1) / kValuesPerThread;
  return static_cast<unsigned>(std::clamp<int64_t>((needed + 31) / 32 * 32, 32, 1024));
}

}  // namespace

void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
              double eps, float* out) {
  if (rows <= 0) return;
  const auto grid = detail::grid_dim(rows, "rms_norm");
  if (dim <= kMaxRegisterDim) {
    detail::launch_dependent(stream, "rms_norm", rms_norm_registers_kernel, grid, register_threads(dim), 0, x, nullptr,
                             nullptr, weight, dim, stride, eps, out);
  } else {
    rms_norm_kernel<<<grid, kThreads, 0, detail::native(stream)>>>(x, weight, dim, stride, eps, out);
  }
  detail::check_launch("rms_norm");
}

void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
  rms_norm(stream, x, weight, rows, dim, dim, static_cast<double>(eps), out);
}

void add_rms_norm(Stream& stream, float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim,
                  double eps, float* out) {
  if (rows <= 0) return;
  if (dim > kMaxRegisterDim) {
    add(stream, hidden, delta, rows * dim, hidden);
    rms_norm(stream, hidden, weight, rows, dim, dim, eps, out);
    return;
  }
  detail::launch_dependent(stream, "add_rms_norm", rms_norm_registers_kernel, detail::grid_dim(rows, "add_rms_norm"),
                           register_threads(dim), 0, hidden, delta, hidden, weight, dim, dim, eps, out);
}

}  // namespace tandem::cuda
