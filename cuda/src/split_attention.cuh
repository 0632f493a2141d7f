#pragma once
// Split-K decode attention (split_attention.cu), which gqa_attention uses for the shapes it supports
// (head_dim 64/128/256, at most 32 query heads per KV head, f32/f16/bf16/fp8/int8 cache) and
// mla_attention for latents of at most 1024 values (any cache kind but int4; f16/bf16 caches of
// kv_lora 128/256/512 on the tensor cores, mla_tensor_cores.cu).
#include <cstdint>

#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda::detail {

bool split_attention_supported(int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim, const PagedKv& kv);
// Floats of scratch the split kernels need for the batch (the per-split partial results).
int64_t split_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim);
void split_gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scratch, float* out);

bool split_mla_supported(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv);
// Whether split_mla_attention runs the case on the tensor cores (mla_tensor_cores.cu: f16/bf16 caches
// of kv_lora 128/256/512) rather than the CUDA-core split kernel: supported there, and the environment
// does not set TANDEM_CUDA_MLA_TC=0 (read at each call).
bool split_mla_tensor_cores(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv);
int64_t split_mla_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_lora);
void split_mla_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                         const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                         float* scratch, float* out);

}  // namespace tandem::cuda::detail
