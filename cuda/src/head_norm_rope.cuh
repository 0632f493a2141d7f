#pragma once
// One head's RMSNorm and rotation, a warp per head, shared by head_norm_rope (rope.cu) and the GQA
// prologue (gqa_prologue.cu), so both give the same bits: cos/sin as rope_kernel forms them (the angle
// in double, scaled by the attention factor, rounded to float), the sum of squares in double as
// rms_norm, each product rounded as the CPU's.
#include <cstdint>

#include "launch.cuh"

namespace tandem::cuda::detail {

constexpr int kHeadWarps = 8;  // heads per block, a warp each
constexpr int64_t kMaxFusedHeadDim = 1024;

// A token's cos/sin for `half` rotary pairs into shared memory, by the block's threads (or those of
// first, first + stride, …: a warp's lanes); the caller synchronises before reading them.
__device__ __forceinline__ void head_rope_table(int64_t position, const double* inv_freq, int64_t half,
                                                double attention_factor, float* cos_of, float* sin_of,
                                                int first = static_cast<int>(threadIdx.x),
                                                int stride = static_cast<int>(blockDim.x)) {
  const double pos = static_cast<double>(position);
  for (int64_t i = first; i < half; i += stride) {
    const double angle = inv_freq[i] * pos;
    cos_of[i] = static_cast<float>(cos(angle) * attention_factor);
    sin_of[i] = static_cast<float>(sin(angle) * attention_factor);
  }
}

// The warp's head v (head_dim values) normalised by norm_weight (none when null) and rotated, in place;
// `own` (head_dim floats of shared memory, the warp's own) holds the result too when it returns. v is
// read through L2: other blocks of the same launch may have written it (gqa_lanes' heads).
__device__ __forceinline__ void norm_rope_head(float* v, float* own, int64_t head_dim, const float* norm_weight,
                                               double eps, const float* cos_of, const float* sin_of, int64_t half,
                                               bool neox) {
  const int lane = threadIdx.x % 32;
  double sum = 0;
  for (int64_t i = lane; i < head_dim; i += 32) {
    own[i] = __ldcg(v + i);
    if (norm_weight != nullptr) sum += static_cast<double>(own[i]) * own[i];
  }
  if (norm_weight != nullptr) {
    sum = warp_sum(sum);
    const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(head_dim) + eps));
    for (int64_t i = lane; i < head_dim; i += 32) own[i] = __fmul_rn(__fmul_rn(own[i], inv), norm_weight[i]);
  }
  __syncwarp();
  for (int64_t i = lane; i < half; i += 32) {
    const float c = cos_of[i], s = sin_of[i];
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = own[a], x1 = own[b];
    own[a] = v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    own[b] = v[b] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
  for (int64_t i = 2 * half + lane; i < head_dim; i += 32) v[i] = own[i];
  __syncwarp();
}

}  // namespace tandem::cuda::detail
