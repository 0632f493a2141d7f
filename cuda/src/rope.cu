// Rotary position embedding in place, as RotaryEmbedding::apply: the angle in double from the
// CPU's inverse-frequency table, cos/sin scaled by the attention factor, then rounded to float.
#include <algorithm>

#include "head_norm_rope.cuh"
#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;
using detail::head_rope_table;
using detail::kHeadWarps;
using detail::kMaxFusedHeadDim;
using detail::norm_rope_head;

// Blocks (token, share of the (head, pair) items); a thread per item, so the double-precision sin
// and cos of one decode token's 2,048 pairs spread over 16 blocks instead of 16 rounds of one.
__global__ void rope_kernel(float* data, int64_t row_stride, int64_t heads, int64_t head_stride,
                            const int64_t* positions, const double* inv_freq, int64_t half, bool neox,
                            double attention_factor) {
  const int64_t t = blockIdx.x;
  const double pos = static_cast<double>(positions[t]);
  for (int64_t item = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x; item < heads * half;
       item += static_cast<int64_t>(gridDim.y) * kThreads) {
    const int64_t h = item / half, i = item % half;
    const double angle = inv_freq[i] * pos;
    const float c = static_cast<float>(cos(angle) * attention_factor);
    const float s = static_cast<float>(sin(angle) * attention_factor);
    float* v = data + t * row_stride + h * head_stride;
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[b] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
}

// Block (token, kHeadWarps heads): the token's cos/sin computed once (head_rope_table), then warp w
// normalises and rotates head w (norm_rope_head). The trigonometry of a decode token's 32 query heads
// is done 4 times instead of 32.
__global__ void __launch_bounds__(kHeadWarps * 32)
    head_norm_rope_kernel(float* data, int64_t heads, int64_t head_dim, const float* norm_weight, double eps,
                          const int64_t* positions, const double* inv_freq, int64_t half, bool neox,
                          double attention_factor) {
  __shared__ float values[kHeadWarps][kMaxFusedHeadDim];
  __shared__ float cos_of[kMaxFusedHeadDim / 2], sin_of[kMaxFusedHeadDim / 2];
  const int64_t t = blockIdx.x;
  head_rope_table(positions[t], inv_freq, half, attention_factor, cos_of, sin_of);
  __syncthreads();
  const int warp = threadIdx.x / 32;
  const int64_t h = static_cast<int64_t>(blockIdx.y) * kHeadWarps + warp;
  if (h >= heads) return;
  norm_rope_head(data + (t * heads + h) * head_dim, values[warp], head_dim, norm_weight, eps, cos_of, sin_of, half,
                 neox);
}

}  // namespace

void head_norm_rope(Stream& stream, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                    const float* norm_weight, double eps, const int64_t* positions, const double* inv_freq,
                    int64_t rotary_dim, bool neox, double attention_factor) {
  if (rows <= 0 || heads <= 0) return;
  if (rotary_dim > head_dim)
    throw Error(ErrorKind::invalid_argument,
                text("cuda::head_norm_rope: a rotary width of ", rotary_dim, " exceeds the head's ", head_dim, " values"));
  if (head_dim > kMaxFusedHeadDim) {
    if (norm_weight != nullptr) rms_norm(stream, data, norm_weight, rows * heads, head_dim, head_dim, eps, data);
    rope(stream, data, rows, heads * head_dim, heads, head_dim, positions, inv_freq, rotary_dim, neox,
         attention_factor);
    return;
  }
  const dim3 grid(detail::grid_dim(rows, "head_norm_rope"),
                  detail::grid_dim((heads + kHeadWarps - 1) / kHeadWarps, "head_norm_rope (heads)", 65535));
  head_norm_rope_kernel<<<grid, kHeadWarps * 32, 0, detail::native(stream)>>>(
      data, heads, head_dim, norm_weight, eps, positions, inv_freq, rotary_dim < 2 ? 0 : rotary_dim / 2, neox,
      attention_factor);
  detail::check_launch("head_norm_rope");
}

void rope(Stream& stream, float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
          const int64_t* positions, const double* inv_freq, int64_t rotary_dim, bool neox, double attention_factor) {
  if (rows <= 0 || heads <= 0 || rotary_dim < 2) return;
  const int64_t items = heads * (rotary_dim / 2);
  const dim3 grid(detail::grid_dim(rows, "rope"),
                  static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, 64)));
  rope_kernel<<<grid, kThreads, 0, detail::native(stream)>>>(
      data, row_stride, heads, head_stride, positions, inv_freq, rotary_dim / 2, neox, attention_factor);
  detail::check_launch("rope");
}

}  // namespace tandem::cuda
