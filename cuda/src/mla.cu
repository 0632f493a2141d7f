// MLA weight absorption over kv_b dequantised to float32 (ops/mla.hpp semantics): the query moves
// into latent space through kv_b's K rows, the attended latent leaves it through the V rows.
#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

// One block per (token, head); threads over latent columns c: Σ_j q[t, h, j] · W[h·(nope+v) + j, c].
__global__ void absorb_kernel(const float* kv_b, int64_t heads, int64_t nope, int64_t rope, int64_t v, int64_t kv_lora,
                              const float* q, float* q_latent) {
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const float* qn = q + (t * heads + h) * (nope + rope);
  const float* wk = kv_b + h * (nope + v) * kv_lora;
  for (int64_t c = threadIdx.x; c < kv_lora; c += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < nope; ++j) acc += qn[j] * wk[j * kv_lora + c];
    q_latent[(t * heads + h) * kv_lora + c] = acc;
  }
}

// One warp per (token, head, i): W_V(h)[i] · attended[t, h].
__global__ void expand_kernel(const float* kv_b, int64_t heads, int64_t nope, int64_t v, int64_t kv_lora,
                              const float* attended, int64_t tokens, float* out) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (item >= tokens * heads * v) return;
  const int lane = threadIdx.x % 32;
  const int64_t t = item / (heads * v), h = (item / v) % heads, i = item % v;
  const float* w = kv_b + (h * (nope + v) + nope + i) * kv_lora;
  const float* a = attended + (t * heads + h) * kv_lora;
  float acc = 0.f;
  for (int64_t c = lane; c < kv_lora; c += 32) acc += w[c] * a[c];
  acc = detail::warp_sum(acc);
  if (lane == 0) out[t * heads * v + h * v + i] = acc;
}

}  // namespace

void mla_absorb_query(Stream& stream, const float* kv_b, int64_t heads, int64_t nope, int64_t rope, int64_t v,
                      int64_t kv_lora, const float* q, int64_t tokens, float* q_latent) {
  if (tokens <= 0) return;
  absorb_kernel<<<detail::grid_dim(tokens * heads, "mla_absorb_query"), 128, 0, detail::native(stream)>>>(
      kv_b, heads, nope, rope, v, kv_lora, q, q_latent);
  detail::check_launch("mla_absorb_query");
}

void mla_expand_values(Stream& stream, const float* kv_b, int64_t heads, int64_t nope, int64_t v, int64_t kv_lora,
                       const float* attended, int64_t tokens, float* out) {
  if (tokens <= 0) return;
  const int64_t items = tokens * heads * v;
  expand_kernel<<<detail::grid_dim((items + 3) / 4, "mla_expand_values"), 128, 0, detail::native(stream)>>>(
      kv_b, heads, nope, v, kv_lora, attended, tokens, out);
  detail::check_launch("mla_expand_values");
}

}  // namespace tandem::cuda
