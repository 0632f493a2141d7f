// The forward pass's glue between kernels, on the device: KV row writes, router top-k, expert
// deferral's split, the shared expert's gated add, row gathers. Each mirrors a CPU reference
// (cpu_backend.cpp, ops/router.cpp, ops/expert_deferral.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ T encode(float v);
template <>
__device__ __forceinline__ float encode<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half encode<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 encode<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void kv_append_kernel(char* layer_base, int64_t block_tokens, int64_t block_stride, int64_t row_bytes,
                                 int64_t plane, const int64_t* slots, const int32_t* block_tables,
                                 int64_t table_stride, const float* rows, const float* next_plane_rows,
                                 int64_t row_stride, int64_t row_width) {
  const int64_t t = blockIdx.x;
  if (blockIdx.y == 1) plane += 1, rows = next_plane_rows;
  const int64_t slot = slots[t];
  const int32_t block = block_tables[t * table_stride + slot / block_tokens];
  T* dst = reinterpret_cast<T*>(layer_base + block * block_stride +
                                (plane * block_tokens + slot % block_tokens) * row_bytes);
  const float* src = rows + t * row_stride;
  for (int64_t i = threadIdx.x; i < row_width; i += blockDim.x) dst[i] = encode<T>(src[i]);
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
  const int64_t slot = slots[t];
  const int32_t block = block_tables[t * table_stride + slot / block_tokens];
  auto* dst = reinterpret_cast<uint8_t*>(layer_base + block * block_stride +
                                         (plane * block_tokens + slot % block_tokens) * row_bytes);
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

// Indices of the k largest values, ties to the lower index (as a stable partial sort).
__device__ void top_k(const double* values, int64_t n, int64_t k, int32_t* out) {
  for (int64_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int64_t i = 0; i < n; ++i) {
      bool taken = false;
      for (int64_t p = 0; p < j; ++p) taken = taken || out[p] == i;
      if (taken) continue;
      if (best < 0 || values[i] > values[best]) best = static_cast<int32_t>(i);
    }
    out[j] = best;
  }
}

constexpr int64_t kPickedInShared = 64;

// One warp per token: the lanes share the exponentials, the softmax sum and each round of the top-k
// scan; the group choice and the final weights stay on lane 0, in the reference's order. The
// per-token arrays live in shared memory when they fit (always, for real routers), else in scratch.
__global__ void router_kernel(RouterSpec spec, const float* logits, int64_t tokens, const float* bias,
                              double* scratch, bool in_shared, int32_t* expert_ids, float* weights) {
  extern __shared__ double token_arrays[];
  __shared__ int32_t picked[kPickedInShared];  // the ids chosen so far, read back without a global round trip
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  if (t >= tokens) return;
  const int64_t n = spec.experts, k = spec.top_k;
  double* scores = in_shared ? token_arrays : scratch + t * (2 * n + spec.n_group);
  double* choice = scores + n;
  double* group_scores = choice + n;
  const float* row = logits + t * n;
  if (spec.kind == 2) {
    for (int64_t e = lane; e < n; e += 32) {
      scores[e] = 1.0 / (1.0 + exp(-static_cast<double>(row[e])));
      choice[e] = scores[e] + (bias ? static_cast<double>(bias[e]) : 0.0);
    }
  } else {
    float max_logit = -INFINITY;
    for (int64_t e = lane; e < n; e += 32) max_logit = fmaxf(max_logit, row[e]);
    max_logit = detail::warp_max(max_logit);
    for (int64_t e = lane; e < n; e += 32) scores[e] = exp(static_cast<double>(row[e]) - static_cast<double>(max_logit));
    __syncwarp();
    double part = 0;
    for (int64_t e = lane; e < n; e += 32) part += scores[e];
    const double sum = detail::warp_sum(part);
    for (int64_t e = lane; e < n; e += 32) choice[e] = scores[e] /= sum;
  }
  __syncwarp();
  int32_t* ids = expert_ids + t * k;
  if (spec.kind != 0 && spec.n_group > 1) {
    const int64_t per_group = n / spec.n_group;
    for (int64_t g = lane; g < spec.n_group; g += 32) {
      const double* gs = choice + g * per_group;
      double best = -INFINITY, second = -INFINITY;
      for (int64_t i = 0; i < per_group; ++i) {
        if (gs[i] > best) {
          second = best;
          best = gs[i];
        } else if (gs[i] > second) {
          second = gs[i];
        }
      }
      group_scores[g] = spec.kind == 2 && per_group > 1 ? best + second : best;
    }
    __syncwarp();
    if (lane == 0) {
      int32_t kept[64];  // topk_group <= 64, checked by the caller
      top_k(group_scores, spec.n_group, spec.topk_group, kept);
      for (int64_t g = 0; g < spec.n_group; ++g) {
        bool keep = false;
        for (int64_t j = 0; j < spec.topk_group; ++j) keep = keep || kept[j] == g;
        if (!keep)
          for (int64_t i = 0; i < per_group; ++i) choice[g * per_group + i] = 0.0;
      }
    }
    __syncwarp();
  }
  // k rounds of a warp-wide arg-max over the experts not yet taken (ties to the lower index, as a
  // stable partial sort); a taken expert's choice becomes -inf (the scores keep the weights).
  for (int64_t j = 0; j < k; ++j) {
    double best = -INFINITY;
    int32_t best_index = 0x7fffffff;
    for (int64_t i = lane; i < n; i += 32)
      if (choice[i] > best || (best_index == 0x7fffffff && choice[i] == best)) {
        best = choice[i];
        best_index = static_cast<int32_t>(i);
      }
    for (int off = 16; off > 0; off /= 2) {
      const double other = __shfl_xor_sync(0xffffffffu, best, off);
      const int32_t other_index = __shfl_xor_sync(0xffffffffu, best_index, off);
      if (other > best || (other == best && other_index < best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    if (lane == 0) {
      ids[j] = best_index;
      if (j < kPickedInShared) picked[j] = best_index;
      choice[best_index] = -INFINITY;
    }
    __syncwarp();
  }
  if (lane != 0) return;
  const auto id_of = [&](int64_t i) { return i < kPickedInShared ? picked[i] : ids[i]; };
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += scores[id_of(i)];
  const double denominator = spec.kind == 2 ? sum + 1e-20 : sum;
  for (int64_t i = 0; i < k; ++i) {
    double value = scores[id_of(i)];
    if (spec.norm_topk_prob) value /= denominator;
    weights[t * k + i] = static_cast<float>(value * spec.routed_scaling_factor);
  }
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
      spec.topk_group <= 0 || spec.topk_group > spec.n_group || spec.topk_group > 64 ||
      spec.experts % spec.n_group != 0)
    throw Error(ErrorKind::invalid_argument,
                text("CUDA router: ", spec.experts, " experts, top ", spec.top_k, ", ", spec.n_group, " groups, top ",
                     spec.topk_group, " groups is not a routing the kernel takes"));
  const auto arrays = static_cast<size_t>(2 * spec.experts + spec.n_group) * sizeof(double);
  const bool in_shared = arrays <= 48 * 1024;
  router_kernel<<<detail::grid_dim(tokens, "router_topk"), 32, in_shared ? arrays : 0, detail::native(stream)>>>(
      spec, logits, tokens, selection_bias, scratch, in_shared, expert_ids, weights);
  detail::check_launch("router_topk");
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
  gather_rows_kernel<<<detail::grid_dim(count, "gather_rows"), kThreads, 0, detail::native(stream)>>>(
      src, src_stride, rows, width, dst, dst_stride);
  detail::check_launch("gather_rows");
}

}  // namespace tandem::cuda
