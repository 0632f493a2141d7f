#pragma once
// Absorbed MLA decode attention on the tensor cores (mla_tensor_cores.cu): the split kernel only;
// split_mla_attention (split_attention.cu) chooses it over the CUDA-core mla_split_kernel and runs
// the shared merge_kernel after it. Included by .cu files only (split_positions is host and device).
#include <cstdint>

#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda::detail {

// Positions per split when a context of n positions is cut into at most target_splits splits, each a
// multiple of quantum: the one formula every split kernel and merge_kernel use (merge_kernel
// recomputes a token's splits from it, so a split kernel's partials must be laid out by it).
__host__ __device__ __forceinline__ int64_t split_positions(int64_t n, int64_t target_splits, int64_t quantum) {
  const int64_t quanta = (n + quantum - 1) / quantum;
  return quantum * ((quanta + target_splits - 1) / target_splits);
}

// Cached positions the tensor-core kernel stages per step; its splits are multiples of it.
constexpr int64_t kMlaTcTile = 64;

// Whether the tensor-core kernel takes this case: an f16 or bf16 cache with 16-byte aligned rows,
// kv_lora 128, 256 or 512, rope_dim a multiple of 16, its shared memory within the device's opt-in
// limit (DeepSeek's 128 heads of 512 + 64: 225.5 KiB of 227). TANDEM_CUDA_MLA_TC=0 is not read here.
bool mla_tensor_cores_supported(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv);
// False where the environment sets TANDEM_CUDA_MLA_TC=0 (read at each call): the CUDA-core kernel
// then runs every case, for A/B runs and tests.
bool mla_tensor_cores_enabled();
// Splits per token the tensor-core kernel aims for (grid: head groups × splits × tokens ≈ 132 blocks,
// one per SM), and the splits the grid and the partials provide room for (≤ that, and ≤ what
// max_context needs).
int64_t mla_tensor_cores_target_splits(int64_t tokens, int64_t heads);
int64_t mla_tensor_cores_split_slots(const DeviceBatch& b, int64_t heads);
// Enqueues the split kernel: a token whose context is one split gets its output in `out`; the others
// leave per (token, head, split s < split_stride) max, sum and kv_lora unnormalised values in
// partials (merge_kernel's layout) for merge_kernel with (target_splits, kMlaTcTile, split_stride).
void mla_tensor_cores_splits(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                             const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                             int64_t target_splits, int64_t split_stride, float* partials, float* out);

}  // namespace tandem::cuda::detail
