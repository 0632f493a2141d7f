// RMSNorm, as ops/norm.cpp: the sum of squares in double, the scale rounded to float once.
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

}  // namespace

void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
              double eps, float* out) {
  if (rows <= 0) return;
  rms_norm_kernel<<<detail::grid_dim(rows, "rms_norm"), kThreads, 0, detail::native(stream)>>>(x, weight, dim, stride,
                                                                                              eps, out);
  detail::check_launch("rms_norm");
}

void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
  rms_norm(stream, x, weight, rows, dim, dim, static_cast<double>(eps), out);
}

}  // namespace tandem::cuda
