// Reference-quality CUDA kernels for the decode path. Layouts as on the CPU: activations float32
// row-major, weights in their stored bytes. The linear kernel is a GEMV (memory bound): one block per
// output feature streams the weight row once and applies it to up to kMaxRows tokens.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <fmt/core.h>

#include "tandem/cuda/kernels.hpp"
#include "tandem/error.hpp"

namespace tandem::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxRows = 8;

void check_launch(const char* kernel) {
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw Error(ErrorKind::internal, fmt::format("CUDA: launching {} failed: {}", kernel, cudaGetErrorString(status)));
}

cudaStream_t native(Stream& s) { return static_cast<cudaStream_t>(s.native()); }

struct F32Row {
  const float* row;
  __device__ explicit F32Row(const uint8_t* p) : row(reinterpret_cast<const float*>(p)) {}
  __device__ float operator()(int64_t i) const { return row[i]; }
};
struct F16Row {
  const __half* row;
  __device__ explicit F16Row(const uint8_t* p) : row(reinterpret_cast<const __half*>(p)) {}
  __device__ float operator()(int64_t i) const { return __half2float(row[i]); }
};
struct BF16Row {
  const __nv_bfloat16* row;
  __device__ explicit BF16Row(const uint8_t* p) : row(reinterpret_cast<const __nv_bfloat16*>(p)) {}
  __device__ float operator()(int64_t i) const { return __bfloat162float(row[i]); }
};
// Q8_0: blocks of 32 values, each an f16 scale followed by 32 int8 quants (34 bytes).
struct Q8_0Row {
  const uint8_t* row;
  __device__ explicit Q8_0Row(const uint8_t* p) : row(p) {}
  __device__ float operator()(int64_t i) const {
    const uint8_t* block = row + (i / 32) * 34;
    __half scale;
    memcpy(&scale, block, sizeof(scale));
    return __half2float(scale) * static_cast<float>(static_cast<int8_t>(block[2 + i % 32]));
  }
};

template <typename RowReader>
__global__ void linear_kernel(const void* weight, int64_t row_bytes, int64_t out_features, int64_t in_features,
                              const float* x, int64_t rows, float* y) {
  const int64_t o = blockIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kMaxRows;
  const int nrows = static_cast<int>(rows - r0 < kMaxRows ? rows - r0 : kMaxRows);
  const RowReader w(static_cast<const uint8_t*>(weight) + o * row_bytes);
  float acc[kMaxRows] = {};
  for (int64_t i = threadIdx.x; i < in_features; i += blockDim.x) {
    const float wi = w(i);
    for (int r = 0; r < nrows; ++r) acc[r] += wi * x[(r0 + r) * in_features + i];
  }
  __shared__ float partial[kMaxRows][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int r = 0; r < nrows; ++r) {
    float v = acc[r];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) partial[r][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < nrows) {
    float sum = 0.f;
    for (int k = 0; k < kThreads / 32; ++k) sum += partial[threadIdx.x][k];
    y[(r0 + threadIdx.x) * out_features + o] = sum;
  }
}

__global__ void rms_norm_kernel(const float* x, const float* weight, int64_t dim, float eps, float* out) {
  const float* row = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * dim;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += row[i] * row[i];
  __shared__ float partial[kThreads / 32];
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  __shared__ float inv_rms;
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int k = 0; k < kThreads / 32; ++k) total += partial[k];
    inv_rms = rsqrtf(total / static_cast<float>(dim) + eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = row[i] * inv_rms * weight[i];
}

__global__ void silu_glu_kernel(const float* gate, const float* up, int64_t count, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    const float g = gate[i];
    out[i] = g / (1.f + __expf(-g)) * up[i];
  }
}

}  // namespace

void linear(Stream& stream, DType weight_type, const void* weight, int64_t out_features, int64_t in_features,
            const float* x, int64_t rows, float* y) {
  if (rows <= 0 || out_features <= 0 || in_features <= 0) return;
  const auto row_bytes = tandem::row_bytes(weight_type, in_features);
  if (!row_bytes)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("cuda::linear: {} values are not whole {} blocks", in_features, dtype_name(weight_type)));
  if (out_features > 0x7fffffff)
    throw Error(ErrorKind::out_of_range, fmt::format("cuda::linear: {} output features", out_features));
  const dim3 grid(static_cast<unsigned>(out_features), static_cast<unsigned>((rows + kMaxRows - 1) / kMaxRows));
  const auto rb = static_cast<int64_t>(*row_bytes);
  switch (weight_type) {
    case DType::f32:
      linear_kernel<F32Row><<<grid, kThreads, 0, native(stream)>>>(weight, rb, out_features, in_features, x, rows, y);
      break;
    case DType::f16:
      linear_kernel<F16Row><<<grid, kThreads, 0, native(stream)>>>(weight, rb, out_features, in_features, x, rows, y);
      break;
    case DType::bf16:
      linear_kernel<BF16Row><<<grid, kThreads, 0, native(stream)>>>(weight, rb, out_features, in_features, x, rows, y);
      break;
    case DType::q8_0:
      linear_kernel<Q8_0Row><<<grid, kThreads, 0, native(stream)>>>(weight, rb, out_features, in_features, x, rows, y);
      break;
    default:
      throw Error(ErrorKind::unsupported,
                  fmt::format("cuda::linear: weights stored as {} are not supported yet", dtype_name(weight_type)));
  }
  check_launch("linear");
}

void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
  if (rows <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, native(stream)>>>(x, weight, dim, eps, out);
  check_launch("rms_norm");
}

void silu_glu(Stream& stream, const float* gate, const float* up, int64_t count, float* out) {
  if (count <= 0) return;
  const auto blocks = static_cast<unsigned>((count + 255) / 256);
  silu_glu_kernel<<<blocks, 256, 0, native(stream)>>>(gate, up, count, out);
  check_launch("silu_glu");
}

}  // namespace tandem::cuda
