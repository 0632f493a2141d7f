// A GQA layer's step between its projections and its attention in one launch: the query's and the
// key's heads normalised and rotated (as head_norm_rope, through the same device code), the rotated
// key row and the value row written into the paged cache (as kv_append_pair). A decode step launches
// one kernel here instead of three.
#include "head_norm_rope.cuh"
#include "kv_rows.cuh"
#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

using detail::kHeadWarps;
using detail::kMaxFusedHeadDim;

struct Prologue {
  float* q;
  float* k;
  const float* v;
  int64_t heads, kv_heads, head_dim;
  const float* q_norm;
  const float* k_norm;
  double eps;
  const int64_t* positions;
  const double* inv_freq;
  int64_t half;
  bool neox;
  double attention_factor;
  char* layer_base;
  int64_t block_tokens, block_stride, row_bytes;
  const int64_t* slots;
  const int32_t* block_tables;
  int64_t table_stride;
};

// Blocks (token, y): y below q_blocks takes kHeadWarps query heads, the next k_blocks kHeadWarps key
// heads (each also stored, rotated, into plane 0), and the last block copies the V row into plane 1.
template <typename T>
__global__ void __launch_bounds__(kHeadWarps * 32) gqa_prologue_kernel(Prologue p) {
  detail::wait_for_prior_grids();
  __shared__ float values[kHeadWarps][kMaxFusedHeadDim];
  __shared__ float cos_of[kMaxFusedHeadDim / 2], sin_of[kMaxFusedHeadDim / 2];
  const int64_t t = blockIdx.x, y = blockIdx.y;
  const int64_t q_blocks = (p.heads + kHeadWarps - 1) / kHeadWarps;
  const int64_t k_blocks = (p.kv_heads + kHeadWarps - 1) / kHeadWarps;
  const int64_t kv_width = p.kv_heads * p.head_dim;
  char* k_row = detail::kv_row_at(p.layer_base, p.block_tokens, p.block_stride, p.row_bytes, 0, p.slots[t],
                                  p.block_tables + t * p.table_stride);
  if (y == q_blocks + k_blocks) {
    T* dst = reinterpret_cast<T*>(k_row + p.block_tokens * p.row_bytes);  // plane 1, the same slot
    const float* src = p.v + t * kv_width;
    for (int64_t i = threadIdx.x; i < kv_width; i += blockDim.x) dst[i] = detail::encode_kv<T>(src[i]);
    return;
  }
  detail::head_rope_table(p.positions[t], p.inv_freq, p.half, p.attention_factor, cos_of, sin_of);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool is_key = y >= q_blocks;
  const int64_t h = (is_key ? y - q_blocks : y) * kHeadWarps + warp;
  if (h >= (is_key ? p.kv_heads : p.heads)) return;
  float* head = is_key ? p.k + (t * p.kv_heads + h) * p.head_dim : p.q + (t * p.heads + h) * p.head_dim;
  detail::norm_rope_head(head, values[warp], p.head_dim, is_key ? p.k_norm : p.q_norm, p.eps, cos_of, sin_of, p.half,
                         p.neox);
  if (!is_key) return;
  T* dst = reinterpret_cast<T*>(k_row) + h * p.head_dim;
  for (int64_t i = lane; i < p.head_dim; i += 32) dst[i] = detail::encode_kv<T>(values[warp][i]);
}

}  // namespace

bool gqa_prologue_fused(KvType type, int64_t head_dim) {
  return (type == KvType::f32 || type == KvType::f16 || type == KvType::bf16) && head_dim <= kMaxFusedHeadDim;
}

void gqa_prologue(Stream& stream, float* q, float* k, const float* v, int64_t tokens, int64_t heads, int64_t kv_heads,
                  int64_t head_dim, const float* q_norm, const float* k_norm, double eps, const int64_t* positions,
                  const double* inv_freq, int64_t rotary_dim, bool neox, double attention_factor, void* layer_base,
                  const PagedKv& kv, const int64_t* slots, const int32_t* block_tables, int64_t table_stride) {
  if (tokens <= 0) return;
  if (!gqa_prologue_fused(kv.type, head_dim) || heads <= 0 || kv_heads <= 0 || rotary_dim > head_dim)
    throw Error(ErrorKind::internal, text("cuda::gqa_prologue: ", heads, " and ", kv_heads, " heads of ", head_dim,
                                          " (rotary ", rotary_dim, ") over this KV type is not a fused case"));
  if (layer_base == nullptr || slots == nullptr || block_tables == nullptr || table_stride <= 0)
    throw Error(ErrorKind::internal, "cuda::gqa_prologue: missing KV planes, slots or block tables");
  const Prologue p{.q = q,
                   .k = k,
                   .v = v,
                   .heads = heads,
                   .kv_heads = kv_heads,
                   .head_dim = head_dim,
                   .q_norm = q_norm,
                   .k_norm = k_norm,
                   .eps = eps,
                   .positions = positions,
                   .inv_freq = inv_freq,
                   .half = rotary_dim < 2 ? 0 : rotary_dim / 2,
                   .neox = neox,
                   .attention_factor = attention_factor,
                   .layer_base = static_cast<char*>(layer_base),
                   .block_tokens = kv.block_tokens,
                   .block_stride = kv.block_stride,
                   .row_bytes = kv.row_bytes,
                   .slots = slots,
                   .block_tables = block_tables,
                   .table_stride = table_stride};
  const int64_t blocks = (heads + kHeadWarps - 1) / kHeadWarps + (kv_heads + kHeadWarps - 1) / kHeadWarps + 1;
  const dim3 grid(detail::grid_dim(tokens, "gqa_prologue"), detail::grid_dim(blocks, "gqa_prologue (heads)", 65535));
  const auto launch = [&](auto kernel) {
    detail::launch_dependent(stream, "gqa_prologue", kernel, grid, kHeadWarps * 32, 0, p);
  };
  switch (kv.type) {
    case KvType::f32: launch(gqa_prologue_kernel<float>); break;
    case KvType::f16: launch(gqa_prologue_kernel<__half>); break;
    default: launch(gqa_prologue_kernel<__nv_bfloat16>); break;
  }
}

}  // namespace tandem::cuda
