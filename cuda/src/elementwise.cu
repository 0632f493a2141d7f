// Element-wise kernels of the forward pass: SiLU-GLU, the residual add, and the MoE scatter and
// slot-ordered combine.
#include "launch.cuh"
#include "silu_glu.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t count, const char* what) { return detail::grid_dim((count + kThreads - 1) / kThreads, what); }

__global__ void silu_glu_kernel(const float* gate, const float* up, int64_t count, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    const float g = gate[i];
    out[i] = detail::silu_glu(g, up[i]);
  }
}

__global__ void add_kernel(const float* a, const float* b, int64_t count, float* out) {
  detail::wait_for_prior_grids();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = a[i] + b[i];
}

__global__ void scatter_rows_kernel(const float* src, const int32_t* rows, int64_t width, float* dst) {
  const int64_t i = blockIdx.x;
  const float* s = src + i * width;
  float* d = dst + static_cast<int64_t>(rows[i]) * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) d[j] = s[j];
}

__global__ void weighted_sum_slots_kernel(const float* slots, const int32_t* slot_rows, const float* weights,
                                          int64_t top_k, int64_t width, float* out) {
  const int64_t t = blockIdx.x;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    float acc = 0.f;
    for (int64_t s = 0; s < top_k; ++s) {
      const int64_t row = slot_rows != nullptr ? slot_rows[t * top_k + s] : t * top_k + s;
      const float v = row >= 0 ? slots[row * width + j] : 0.f;
      acc = __fadd_rn(acc, __fmul_rn(weights[t * top_k + s], v));
    }
    out[t * width + j] = acc;
  }
}

}  // namespace

void silu_glu(Stream& stream, const float* gate, const float* up, int64_t count, float* out) {
  if (count <= 0) return;
  silu_glu_kernel<<<blocks_for(count, "silu_glu"), kThreads, 0, detail::native(stream)>>>(gate, up, count, out);
  detail::check_launch("silu_glu");
}

void add(Stream& stream, const float* a, const float* b, int64_t count, float* out) {
  if (count <= 0) return;
  detail::launch_dependent(stream, "add", add_kernel, blocks_for(count, "add"), kThreads, 0, a, b, count, out);
}

void scatter_rows(Stream& stream, const float* src, const int32_t* rows, int64_t count, int64_t width, float* dst) {
  if (count <= 0) return;
  scatter_rows_kernel<<<detail::grid_dim(count, "scatter_rows"), 128, 0, detail::native(stream)>>>(src, rows, width,
                                                                                                  dst);
  detail::check_launch("scatter_rows");
}

void weighted_sum_slots(Stream& stream, const float* slots, const float* weights, int64_t tokens, int64_t top_k,
                        int64_t width, float* out, const int32_t* slot_rows) {
  if (tokens <= 0) return;
  weighted_sum_slots_kernel<<<detail::grid_dim(tokens, "weighted_sum_slots"), 128, 0, detail::native(stream)>>>(
      slots, slot_rows, weights, top_k, width, out);
  detail::check_launch("weighted_sum_slots");
}

}  // namespace tandem::cuda
