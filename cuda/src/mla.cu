// MLA weight absorption (ops/mla.hpp semantics) read straight from kv_b's stored rows (every weight
// type of dequant.cuh, FP8 block scales applied per 32-value chunk): the query moves into latent space
// through kv_b's K rows, the attended latent leaves it through the V rows. Nothing is dequantised
// into memory, so a step reads kv_b once instead of writing and reading a float32 copy.
#include "dequant.cuh"
#include "launch.cuh"
#include "staged_rows.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

using detail::kFp8Block;
constexpr int kAbsorbWarps = 4;

// The FP8 block scale of row r, column chunk c (or 1).
__device__ __forceinline__ float chunk_scale(const float* scales, int64_t scale_cols, int64_t r, int64_t c) {
  return scales != nullptr ? scales[(r / kFp8Block) * scale_cols + (c * 32) / kFp8Block] : 1.f;
}

// One block per (token, head): q_latent[t, h, c] = Σ_j q[t, h, j] · W[h·(nope+v) + j, c]. Warp w takes
// rows j ≡ w (mod 4), lane l the 32 latent columns of chunk l (kv_lora ≤ 1024), decoded from the
// stored row; the warps' sums meet in shared memory.
template <typename D>
__global__ void absorb_kernel(const uint8_t* kv_b, int64_t row_bytes, const float* scales, int64_t scale_cols,
                              int64_t heads, int64_t nope, int64_t rope, int64_t v, int64_t kv_lora, const float* q,
                              float* q_latent) {
  extern __shared__ float warp_sums[];  // [kAbsorbWarps][kv_lora]
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t chunks = kv_lora / 32;
  const float* qn = q + (t * heads + h) * (nope + rope);
  float acc[32] = {};
  float vals[32];
  if (lane < chunks) {
    for (int64_t j = warp; j < nope; j += kAbsorbWarps) {
      const int64_t r = h * (nope + v) + j;
      D::chunk(kv_b + r * row_bytes, lane, vals);
      const float qj = __fmul_rn(qn[j], chunk_scale(scales, scale_cols, r, lane));
#pragma unroll
      for (int k = 0; k < 32; ++k) acc[k] += qj * vals[k];
    }
#pragma unroll
    for (int k = 0; k < 32; ++k) warp_sums[warp * kv_lora + lane * 32 + k] = acc[k];
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < kv_lora; c += blockDim.x) {
    float sum = 0.f;
    for (int w = 0; w < kAbsorbWarps; ++w) sum += warp_sums[w * kv_lora + c];
    q_latent[(t * heads + h) * kv_lora + c] = sum;
  }
}

// One warp per (token, head, i): W_V(h)[i] · attended[t, h], from the stored row.
template <typename D>
__global__ void expand_kernel(const uint8_t* kv_b, int64_t row_bytes, const float* scales, int64_t scale_cols,
                              int64_t heads, int64_t nope, int64_t v, int64_t kv_lora, const float* attended,
                              int64_t tokens, float* out) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (item >= tokens * heads * v) return;
  const int lane = threadIdx.x % 32;
  const int64_t t = item / (heads * v), h = (item / v) % heads, i = item % v;
  const int64_t r = h * (nope + v) + nope + i;
  const uint8_t* w = kv_b + r * row_bytes;
  const float* a = attended + (t * heads + h) * kv_lora;
  float acc = 0.f;
  float vals[32];
  for (int64_t c = lane; c < kv_lora / 32; c += 32) {
    D::chunk(w, c, vals);
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < 32; ++k) dot += vals[k] * a[c * 32 + k];
    acc += __fmul_rn(dot, chunk_scale(scales, scale_cols, r, c));
  }
  acc = detail::warp_sum(acc);
  if (lane == 0) out[t * heads * v + h * v + i] = acc;
}

void check_mla_weight(const DeviceWeight& kv_b, int64_t heads, int64_t nope, int64_t v, int64_t kv_lora,
                      const char* what) {
  if (kv_b.in_features != kv_lora || kv_b.out_features != heads * (nope + v) || kv_lora % 32 != 0 ||
      kv_lora > 1024)
    throw Error(ErrorKind::invalid_argument,
                text("cuda::", what, ": kv_b [", kv_b.out_features, ", ", kv_b.in_features, "] does not fit ", heads,
                     " heads of ", nope, " + ", v, " rows over a latent of ", kv_lora,
                     " (a multiple of 32, at most 1024)"));
}

}  // namespace

void mla_absorb_query(Stream& stream, const DeviceWeight& kv_b, int64_t heads, int64_t nope, int64_t rope, int64_t v,
                      int64_t kv_lora, const float* q, int64_t tokens, float* q_latent) {
  if (tokens <= 0) return;
  check_mla_weight(kv_b, heads, nope, v, kv_lora, "mla_absorb_query");
  const auto row_bytes = static_cast<int64_t>(*tandem::row_bytes(kv_b.type, kv_b.in_features));
  const int64_t scale_cols = (kv_lora + kFp8Block - 1) / kFp8Block;
  const auto shared = static_cast<size_t>(kAbsorbWarps * kv_lora) * sizeof(float);
  const bool known = detail::dispatch_weight_type(kv_b.type, [&](auto decoder) {
    absorb_kernel<decltype(decoder)><<<detail::grid_dim(tokens * heads, "mla_absorb_query"), 32 * kAbsorbWarps,
                                       shared, detail::native(stream)>>>(
        static_cast<const uint8_t*>(kv_b.data), row_bytes, kv_b.block_scales, scale_cols, heads, nope, rope, v,
        kv_lora, q, q_latent);
  });
  if (!known) throw Error(ErrorKind::unsupported, text("cuda::mla_absorb_query: no kernel for ", dtype_name(kv_b.type)));
  detail::check_launch("mla_absorb_query");
}

void mla_expand_values(Stream& stream, const DeviceWeight& kv_b, int64_t heads, int64_t nope, int64_t v,
                       int64_t kv_lora, const float* attended, int64_t tokens, float* out) {
  if (tokens <= 0) return;
  check_mla_weight(kv_b, heads, nope, v, kv_lora, "mla_expand_values");
  const auto row_bytes = static_cast<int64_t>(*tandem::row_bytes(kv_b.type, kv_b.in_features));
  const int64_t scale_cols = (kv_lora + kFp8Block - 1) / kFp8Block;
  const int64_t items = tokens * heads * v;
  const bool known = detail::dispatch_weight_type(kv_b.type, [&](auto decoder) {
    expand_kernel<decltype(decoder)><<<detail::grid_dim((items + 3) / 4, "mla_expand_values"), 128, 0,
                                       detail::native(stream)>>>(
        static_cast<const uint8_t*>(kv_b.data), row_bytes, kv_b.block_scales, scale_cols, heads, nope, v, kv_lora,
        attended, tokens, out);
  });
  if (!known) throw Error(ErrorKind::unsupported, text("cuda::mla_expand_values: no kernel for ", dtype_name(kv_b.type)));
  detail::check_launch("mla_expand_values");
}

}  // namespace tandem::cuda
