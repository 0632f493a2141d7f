// Causal attention over the paged KV cache (GQA and absorbed MLA), as ops/attention.cpp: one block
// per (token, head); its warps score the cached keys (one key per warp step), the block takes the
// softmax (sum in double, as the reference), then threads over the value width accumulate the
// weighted values in position order. Scores live in caller-provided scratch, so any context length
// fits. GQA and MLA shapes split_attention.cu supports go there instead (split-K flash decoding);
// these kernels stay as the path for the others and as the CUDA-side reference their tests compare with.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "split_attention.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;

using detail::kv_value;

__device__ __forceinline__ const uint8_t* kv_row(const PagedKv& kv, const int32_t* table, int64_t plane, int64_t pos) {
  const int64_t block = table[pos / kv.block_tokens];
  return static_cast<const uint8_t*>(kv.layer_base) + block * kv.block_stride +
         (plane * kv.block_tokens + pos % kv.block_tokens) * kv.row_bytes;
}

// Softmax over scores[0, n) in place (probabilities after), by the whole block.
__device__ void block_softmax(float* scores, int64_t n, float local_max) {
  __shared__ float max_scratch[32];
  __shared__ double sum_scratch[32];
  const float m = detail::block_max(local_max, max_scratch);
  double sum = 0;
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
    const float e = expf(scores[s] - m);
    scores[s] = e;
    sum += e;
  }
  sum = detail::block_sum(sum, sum_scratch);
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) scores[s] = __fmul_rn(scores[s], inv);
  __syncthreads();
}

template <KvType K>
__global__ void gqa_kernel(PagedKv kv, DeviceBatch batch, const float* q, int64_t heads, int64_t kv_heads,
                           int64_t head_dim, float softmax_scale, float* scratch, float* out) {
  extern __shared__ float qs[];
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads, g = h / (heads / kv_heads);
  const int64_t n = batch.positions[t] + 1;
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  float* scores = scratch + static_cast<int64_t>(blockIdx.x) * batch.max_context;
  for (int64_t i = threadIdx.x; i < head_dim; i += blockDim.x) qs[i] = q[(t * heads + h) * head_dim + i];
  const int64_t width = kv_heads * head_dim;  // a K or V row, all of it coded in an fp8/int8 cache
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float local_max = -INFINITY;
  for (int64_t s = warp; s < n; s += warps) {
    const uint8_t* k = kv_row(kv, table, 0, s);
    float d = 0.f;
    for (int64_t i = lane; i < head_dim; i += 32) d += qs[i] * kv_value<K>(k, g * head_dim + i, width);
    d = __fmul_rn(detail::warp_sum(d), softmax_scale);
    if (lane == 0) scores[s] = d;
    local_max = fmaxf(local_max, d);
  }
  __syncthreads();
  block_softmax(scores, n, local_max);
  for (int64_t i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float acc = 0.f;
    for (int64_t s = 0; s < n; ++s) acc += scores[s] * kv_value<K>(kv_row(kv, table, 1, s), g * head_dim + i, width);
    out[(t * heads + h) * head_dim + i] = acc;
  }
}

template <KvType K>
__global__ void mla_kernel(PagedKv kv, DeviceBatch batch, const float* q_latent, const float* q_rope, int64_t heads,
                           int64_t kv_lora, int64_t rope_dim, float softmax_scale, float* scratch, float* out) {
  extern __shared__ float qs[];  // [kv_lora latent query | rope_dim rope query]
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int64_t n = batch.positions[t] + 1;
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  float* scores = scratch + static_cast<int64_t>(blockIdx.x) * batch.max_context;
  for (int64_t i = threadIdx.x; i < kv_lora; i += blockDim.x) qs[i] = q_latent[(t * heads + h) * kv_lora + i];
  for (int64_t i = threadIdx.x; i < rope_dim; i += blockDim.x) qs[kv_lora + i] = q_rope[(t * heads + h) * rope_dim + i];
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float local_max = -INFINITY;
  for (int64_t s = warp; s < n; s += warps) {
    const uint8_t* row = kv_row(kv, table, 0, s);
    float latent = 0.f, rope = 0.f;
    for (int64_t i = lane; i < kv_lora; i += 32) latent += qs[i] * kv_value<K>(row, i, kv_lora);
    for (int64_t i = lane; i < rope_dim; i += 32) rope += qs[kv_lora + i] * kv_value<K>(row, kv_lora + i, kv_lora);
    const float d = __fmul_rn(__fadd_rn(detail::warp_sum(latent), detail::warp_sum(rope)), softmax_scale);
    if (lane == 0) scores[s] = d;
    local_max = fmaxf(local_max, d);
  }
  __syncthreads();
  block_softmax(scores, n, local_max);
  for (int64_t i = threadIdx.x; i < kv_lora; i += blockDim.x) {
    float acc = 0.f;
    for (int64_t s = 0; s < n; ++s) acc += scores[s] * kv_value<K>(kv_row(kv, table, 0, s), i, kv_lora);
    out[(t * heads + h) * kv_lora + i] = acc;
  }
}

template <typename Fn>
void dispatch_kv(KvType type, Fn&& fn) {
  switch (type) {
    case KvType::f32: fn(std::integral_constant<KvType, KvType::f32>{}); return;
    case KvType::f16: fn(std::integral_constant<KvType, KvType::f16>{}); return;
    case KvType::bf16: fn(std::integral_constant<KvType, KvType::bf16>{}); return;
    case KvType::fp8: fn(std::integral_constant<KvType, KvType::fp8>{}); return;
    case KvType::int8: fn(std::integral_constant<KvType, KvType::int8>{}); return;
    default: break;  // int4 has no CUDA attention kernel (refused at kv_attach)
  }
  throw Error(ErrorKind::unsupported, "cuda attention: no kernel for this KV type");
}

// A quantised cache's rows must end in exactly the f16 tail the kernels expect: none for GQA, the
// rope key for MLA (values that are not there would be read as codes).
void check_tail(const PagedKv& kv, int64_t rope_values, const char* what) {
  if (detail::kv_quantised(kv.type) && kv.rope_values != rope_values)
    throw Error(ErrorKind::invalid_argument, text("cuda ", what, ": the fp8/int8 cache keeps ", kv.rope_values,
                                                  " f16 values per row, the kernel expects ", rope_values));
}

}  // namespace

void gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                   int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scores, float* out) {
  if (batch.tokens <= 0) return;
  if (kv_heads <= 0 || heads % kv_heads != 0)
    throw Error(ErrorKind::invalid_argument,
                text("cuda gqa_attention: ", heads, " heads are not a multiple of ", kv_heads, " kv heads"));
  check_tail(kv, 0, "gqa_attention");
  if (detail::split_attention_supported(batch.tokens, heads, kv_heads, head_dim, kv)) {
    detail::split_gqa_attention(stream, kv, batch, q, heads, kv_heads, head_dim, softmax_scale, scores, out);
    return;
  }
  gqa_attention_unsplit(stream, kv, batch, q, heads, kv_heads, head_dim, softmax_scale, scores, out);
}

void gqa_attention_unsplit(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scores,
                           float* out) {
  if (batch.tokens <= 0) return;
  if (kv_heads <= 0 || heads % kv_heads != 0)
    throw Error(ErrorKind::invalid_argument,
                text("cuda gqa_attention: ", heads, " heads are not a multiple of ", kv_heads, " kv heads"));
  check_tail(kv, 0, "gqa_attention");
  const unsigned grid = detail::grid_dim(batch.tokens * heads, "gqa_attention");
  const auto shared = static_cast<size_t>(head_dim) * sizeof(float);
  dispatch_kv(kv.type, [&](auto k) {
    gqa_kernel<decltype(k)::value><<<grid, kThreads, shared, detail::native(stream)>>>(
        kv, batch, q, heads, kv_heads, head_dim, softmax_scale, scores, out);
  });
  detail::check_launch("gqa_attention");
}

int64_t gqa_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return std::max(attention_scratch_floats(b, heads),
                  detail::split_attention_scratch_floats(b, heads, kv_heads, head_dim));
}

void mla_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                   const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                   float* scores, float* out) {
  if (batch.tokens <= 0) return;
  check_tail(kv, rope_dim, "mla_attention");
  if (detail::split_mla_supported(batch.tokens, heads, kv_lora, rope_dim, kv)) {
    detail::split_mla_attention(stream, kv, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, scores,
                                out);
    return;
  }
  mla_attention_unsplit(stream, kv, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, scores, out);
}

int64_t mla_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_lora) {
  return std::max(attention_scratch_floats(b, heads), detail::split_mla_scratch_floats(b, heads, kv_lora));
}

void mla_attention_unsplit(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                           const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                           float* scores, float* out) {
  if (batch.tokens <= 0) return;
  check_tail(kv, rope_dim, "mla_attention");
  const unsigned grid = detail::grid_dim(batch.tokens * heads, "mla_attention");
  const auto shared = static_cast<size_t>(kv_lora + rope_dim) * sizeof(float);
  dispatch_kv(kv.type, [&](auto k) {
    mla_kernel<decltype(k)::value><<<grid, kThreads, shared, detail::native(stream)>>>(
        kv, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, scores, out);
  });
  detail::check_launch("mla_attention");
}

}  // namespace tandem::cuda
