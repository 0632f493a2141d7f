// The forward pass's glue between kernels, on the device: KV row writes, router top-k, expert
// deferral's split, the shared expert's gated add, row gathers. Each mirrors a CPU reference
// (cpu_backend.cpp, ops/router.cpp, ops/expert_deferral.cpp).
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "router_topk.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;

using detail::kv_row_at;

template <typename T>
__global__ void kv_append_kernel(char* layer_base, int64_t block_tokens, int64_t block_stride, int64_t row_bytes,
                                 int64_t plane, const int64_t* slots, const int32_t* block_tables,
                                 int64_t table_stride, const float* rows, const float* next_plane_rows,
                                 int64_t row_stride, int64_t row_width) {
  const int64_t t = blockIdx.x;
  if (blockIdx.y == 1) plane += 1, rows = next_plane_rows;
  T* dst = reinterpret_cast<T*>(
      kv_row_at(layer_base, block_tokens, block_stride, row_bytes, plane, slots[t], block_tables + t * table_stride));
  const float* src = rows + t * row_stride;
  for (int64_t i = threadIdx.x; i < row_width; i += blockDim.x) dst[i] = detail::encode_kv<T>(src[i]);
}

// fp8/int8 rows as kv_quant_encode_row writes them: a warp per group of values (its absmax by a warp
// reduction, the scale rounded up to f16, then the codes); the MLA rope tail after the scales in f16.
template <KvType K>
__global__ void kv_append_quantised_kernel(char* layer_base, int64_t block_tokens, int64_t block_stride,
                                           int64_t row_bytes, int64_t plane, const int64_t* slots,
                                           const int32_t* block_tables, int64_t table_stride, const float* rows,
                                           const float* next_plane_rows, int64_t row_stride, int64_t row_width,
                                           int64_t rope_values) {
  const int64_t t = blockIdx.x;
  if (blockIdx.y == 1) plane += 1, rows = next_plane_rows;
  auto* dst = reinterpret_cast<uint8_t*>(
      kv_row_at(layer_base, block_tokens, block_stride, row_bytes, plane, slots[t], block_tables + t * table_stride));
  const float* src = rows + t * row_stride;
  const int64_t width = row_width - rope_values, group = kv_group_values(width), groups = width / group;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t k = warp; k < groups; k += warps) {
    const float* x = src + k * group;
    float absmax = 0.f;
    for (int64_t i = lane; i < group; i += 32) absmax = fmaxf(absmax, fabsf(x[i]));
    absmax = detail::warp_max(absmax);
    const uint16_t bits = detail::f16_round_up(__fdiv_rn(absmax, detail::kv_code_max<K>()));
    if (lane == 0) detail::store_u16_bytes(dst + width + 2 * k, bits);
    const float scale = detail::f16_bits_to_float(bits);
    for (int64_t i = lane; i < group; i += 32) dst[k * group + i] = detail::encode_code<K>(x[i], scale);
  }
  uint8_t* tail = dst + detail::quantised_row_bytes(width);
  for (int64_t i = threadIdx.x; i < rope_values; i += blockDim.x)
    detail::store_f16(tail + 2 * i, src[width + i]);
}

// One block per token (router_topk.cuh's route_token); the per-token arrays live in shared memory
// when they fit (always, for real routers), else in scratch.
__global__ void router_kernel(RouterSpec spec, const float* logits, int64_t tokens, const float* bias,
                              double* scratch, bool in_shared, int32_t* expert_ids, float* weights) {
  detail::wait_for_prior_grids();
  extern __shared__ double token_arrays[];
  const int64_t t = blockIdx.x;
  if (t >= tokens) return;
  double* arrays = in_shared ? token_arrays : scratch + t * detail::route_arrays(spec);
  detail::route_token(spec, logits + t * spec.experts, bias, arrays, expert_ids + t * spec.top_k,
                      weights + t * spec.top_k);
}

// The expert cache's split (split_cached_experts, ops in backend/cpu/reference/expert_cache_split.cpp):
// one thread per pair. Ids outside [0, experts) go to neither side and are not counted.
__global__ void split_cached_kernel(const int32_t* ids, int64_t pairs, const int32_t* held_map, int64_t experts,
                                    int32_t* held, int32_t* rest, uint32_t* counts) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const int32_t e = ids[p];
  const bool valid = e >= 0 && e < experts;
  const bool is_held = valid && held_map[e] != 0;
  held[p] = is_held ? e : -1;
  rest[p] = valid && !is_held ? e : -1;
  if (counts != nullptr && valid) atomicAdd(&counts[e], 1u);
}

// Slot i is kept when fewer than top_k - defer slots beat it (a larger weight, or equal and
// earlier); kept and deferred slots keep their routing order.
__global__ void split_deferred_kernel(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                                      int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                                      float* deferred_weights) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const int64_t keep = top_k - defer;
  const int32_t* id = expert_ids + t * top_k;
  const float* w = weights + t * top_k;
  int64_t kept = 0, deferred = 0;
  for (int64_t i = 0; i < top_k; ++i) {
    int64_t beaten_by = 0;
    for (int64_t j = 0; j < top_k; ++j) beaten_by += (w[j] > w[i] || (w[j] == w[i] && j < i)) ? 1 : 0;
    if (beaten_by < keep) {
      kept_ids[t * keep + kept] = id[i];
      kept_weights[t * keep + kept] = w[i];
      ++kept;
    } else {
      deferred_ids[t * defer + deferred] = id[i];
      deferred_weights[t * defer + deferred] = w[i];
      ++deferred;
    }
  }
}

__global__ void gated_add_kernel(float* acc, const float* x, const float* gate_logits, int64_t width) {
  const int64_t r = blockIdx.x;
  const float g = gate_logits ? __fdiv_rn(1.f, __fadd_rn(1.f, expf(-gate_logits[r]))) : 1.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    acc[r * width + i] = __fadd_rn(acc[r * width + i], __fmul_rn(g, x[r * width + i]));
}

__global__ void gather_rows_kernel(const float* src, int64_t src_stride, const int32_t* rows, int64_t width,
                                   float* dst, int64_t dst_stride) {
  detail::wait_for_prior_grids();
  const int64_t i = blockIdx.x;
  const int64_t r = rows ? rows[i] : i;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) dst[i * dst_stride + j] = src[r * src_stride + j];
}

}  // namespace

namespace {

// kv_append of `planes` (1 or 2) consecutive planes from `plane`, the second's rows at next_plane_rows:
// one launch, blockIdx.y the plane.
void launch_kv_append(Stream& stream, void* layer_base, const PagedKv& kv, int64_t plane, int64_t planes,
                      int64_t tokens, const int64_t* slots, const int32_t* block_tables, int64_t table_stride,
                      const float* rows, const float* next_plane_rows, int64_t row_stride, int64_t row_width) {
  if (tokens <= 0) return;
  if (layer_base == nullptr || slots == nullptr || block_tables == nullptr || table_stride <= 0)
    throw Error(ErrorKind::internal, "CUDA kv_append: missing KV planes, slots or block tables");
  if (kv.rope_values < 0 || kv.rope_values >= row_width)
    throw Error(ErrorKind::internal, text("CUDA kv_append: ", kv.rope_values, " f16 values at the end of a row of ",
                                          row_width));
  const dim3 grid(detail::grid_dim(tokens, "kv_append"), static_cast<unsigned>(planes));
  auto* base = static_cast<char*>(layer_base);
  cudaStream_t s = detail::native(stream);
  const auto plain = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, s>>>(base, kv.block_tokens, kv.block_stride, kv.row_bytes, plane, slots, block_tables,
                                     table_stride, rows, next_plane_rows, row_stride, row_width);
  };
  const auto quantised = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, s>>>(base, kv.block_tokens, kv.block_stride, kv.row_bytes, plane, slots, block_tables,
                                     table_stride, rows, next_plane_rows, row_stride, row_width, kv.rope_values);
  };
  switch (kv.type) {
    case KvType::f32: plain(kv_append_kernel<float>); break;
    case KvType::f16: plain(kv_append_kernel<__half>); break;
    case KvType::bf16: plain(kv_append_kernel<__nv_bfloat16>); break;
    case KvType::fp8: quantised(kv_append_quantised_kernel<KvType::fp8>); break;
    case KvType::int8: quantised(kv_append_quantised_kernel<KvType::int8>); break;
    default:
      throw Error(ErrorKind::unsupported, "CUDA kv_append: the KV type has no device kernel (use --kv-type f16, "
                                          "bf16, f32, fp8 or int8)");
  }
  detail::check_launch("kv_append");
}

}  // namespace

void kv_append(Stream& stream, void* layer_base, const PagedKv& kv, int64_t plane, int64_t tokens,
               const int64_t* slots, const int32_t* block_tables, int64_t table_stride, const float* rows,
               int64_t row_stride, int64_t row_width) {
  launch_kv_append(stream, layer_base, kv, plane, 1, tokens, slots, block_tables, table_stride, rows, nullptr,
                   row_stride, row_width);
}

void kv_append_pair(Stream& stream, void* layer_base, const PagedKv& kv, int64_t tokens, const int64_t* slots,
                    const int32_t* block_tables, int64_t table_stride, const float* k_rows, const float* v_rows,
                    int64_t row_stride, int64_t row_width) {
  launch_kv_append(stream, layer_base, kv, 0, 2, tokens, slots, block_tables, table_stride, k_rows, v_rows,
                   row_stride, row_width);
}

void router_topk(Stream& stream, const RouterSpec& spec, const float* logits, int64_t tokens,
                 const float* selection_bias, double* scratch, int32_t* expert_ids, float* weights) {
  if (tokens <= 0) return;
  if (spec.experts <= 0 || spec.top_k <= 0 || spec.top_k > spec.experts || spec.n_group <= 0 ||
      spec.topk_group <= 0 || spec.topk_group > spec.n_group ||
      spec.experts % spec.n_group != 0)
    throw Error(ErrorKind::invalid_argument,
                text("CUDA router: ", spec.experts, " experts, top ", spec.top_k, ", ", spec.n_group, " groups, top ",
                     spec.topk_group, " groups is not a routing the kernel takes"));
  const auto arrays = static_cast<size_t>(detail::route_arrays(spec)) * sizeof(double);
  const bool in_shared = arrays <= 48 * 1024;
  const auto threads = static_cast<unsigned>(std::min<int64_t>((spec.experts + 31) / 32 * 32, 1024));
  detail::launch_dependent(stream, "router_topk", router_kernel, detail::grid_dim(tokens, "router_topk"), threads,
                           in_shared ? arrays : 0, spec, logits, tokens, selection_bias, scratch, in_shared, expert_ids,
                           weights);
}

void split_deferred_experts(Stream& stream, const int32_t* expert_ids, const float* weights, int64_t tokens,
                            int64_t top_k, int64_t defer, int32_t* kept_ids, float* kept_weights,
                            int32_t* deferred_ids, float* deferred_weights) {
  if (tokens <= 0) return;
  if (defer <= 0 || defer >= top_k || top_k > 64)
    throw Error(ErrorKind::invalid_argument,
                text("CUDA expert deferral: ", defer, " of ", top_k, " routed experts per token cannot be deferred"));
  const auto grid = detail::grid_dim((tokens + 63) / 64, "split_deferred_experts");
  split_deferred_kernel<<<grid, 64, 0, detail::native(stream)>>>(expert_ids, weights, tokens, top_k, defer, kept_ids,
                                                                 kept_weights, deferred_ids, deferred_weights);
  detail::check_launch("split_deferred_experts");
}

void split_cached_experts(Stream& stream, const int32_t* expert_ids, int64_t pairs, const int32_t* held_map,
                          int64_t experts, int32_t* held, int32_t* rest, uint32_t* counts) {
  if (pairs <= 0) return;
  const auto grid = detail::grid_dim((pairs + 255) / 256, "split_cached_experts");
  split_cached_kernel<<<grid, 256, 0, detail::native(stream)>>>(expert_ids, pairs, held_map, experts, held, rest,
                                                                counts);
  detail::check_launch("split_cached_experts");
}

void gated_add(Stream& stream, float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) {
  if (rows <= 0 || width <= 0) return;
  gated_add_kernel<<<detail::grid_dim(rows, "gated_add"), 256, 0, detail::native(stream)>>>(acc, x, gate_logits,
                                                                                            width);
  detail::check_launch("gated_add");
}

void gather_rows(Stream& stream, const float* src, int64_t src_stride, const int32_t* rows, int64_t count,
                 int64_t width, float* dst, int64_t dst_stride) {
  if (count <= 0 || width <= 0) return;
  detail::launch_dependent(stream, "gather_rows", gather_rows_kernel, detail::grid_dim(count, "gather_rows"), kThreads,
                           0, src, src_stride, rows, width, dst, dst_stride);
}

}  // namespace tandem::cuda
