// GQA attention over the paged cache as split-K flash decoding: a block per (token, KV head, split of
// the positions) with one warp per query head of the group, so every cached K/V row is read once per
// block and shared by the group's heads; each warp keeps a running softmax (max, sum, weighted values)
// over its split with four positions' K and V loads in flight at a time; a second kernel merges the
// splits. The split length depends only on the token's own context length, the KV heads and the
// batch size (never on the capacity the batch was sized for), so a recorded pass and an eager one
// split alike and give the same bits. Absorbed MLA (mla_split_kernel below) splits the same way, its
// blocks sharing each staged latent row among eight query heads. fp8/int8 rows are dequantised as
// they are loaded (each code times its group's f16 scale, in registers or the staged tile).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "split_attention.cuh"

namespace tandem::cuda::detail {
namespace {

constexpr int kPositionsInFlight = 4;
constexpr int64_t kSplitQuantum = 16;  // positions; splits start on block_tokens-sized boundaries
constexpr int64_t kTargetBlocks = 528;  // ~4 blocks per SM of an H200

// Values [first, first + D) of a K or V row as floats: one vector load of D elements, or for fp8/int8
// D codes and their group's scale (D divides the 32-value groups: head_dim is 64, 128 or 256).
template <KvType K, int D>
__device__ __forceinline__ void load_slice(const uint8_t* row, int64_t first, int64_t width, float* out) {
  if constexpr (kv_quantised(K)) {
    const float scale = group_scale(row, width, first / kKvGroupValues);
    // The D codes in one load where aligned (rows are, unless a row's bytes are odd); fp8 pairs widen
    // in the hardware conversion (every e4m3 value is an f16 value, so the products are the
    // software decoder's bits).
    const uint8_t* codes = row + first;
    uint32_t packed[(D + 3) / 4];
    if ((reinterpret_cast<uintptr_t>(codes) & (D - 1)) == 0) {
      if constexpr (D == 8) {
        const uint2 w = *reinterpret_cast<const uint2*>(codes);
        packed[0] = w.x;
        packed[1] = w.y;
      } else if constexpr (D == 4) {
        packed[0] = *reinterpret_cast<const uint32_t*>(codes);
      } else {
        packed[0] = *reinterpret_cast<const uint16_t*>(codes);
      }
    } else {
#pragma unroll
      for (int i = 0; i < (D + 3) / 4; ++i) packed[i] = 0;
#pragma unroll
      for (int i = 0; i < D; ++i) packed[i / 4] |= static_cast<uint32_t>(codes[i]) << (8 * (i % 4));
    }
#pragma unroll
    for (int i = 0; i < D; i += 2) {
      const uint32_t pair = (packed[i / 4] >> (8 * (i % 4))) & 0xffffu;  // codes i (low byte) and i + 1
      if constexpr (K == KvType::fp8) {
        const float2 f =
            __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3)));
        out[i] = f.x * scale;
        out[i + 1] = f.y * scale;
      } else {
        out[i] = static_cast<float>(static_cast<int8_t>(pair & 0xffu)) * scale;
        out[i + 1] = static_cast<float>(static_cast<int8_t>(pair >> 8)) * scale;
      }
    }
    return;
  }
  const uint8_t* p = row + first * (K == KvType::f32 ? 4 : 2);
  if constexpr (K == KvType::f32) {
#pragma unroll
    for (int i = 0; i < D; i += 2) {
      const float2 v = reinterpret_cast<const float2*>(p)[i / 2];
      out[i] = v.x;
      out[i + 1] = v.y;
    }
  } else {
    // D 16-bit values: D/2 words (D is 2, 4 or 8).
    uint32_t words[D / 2];
    if constexpr (D == 2) {
      words[0] = *reinterpret_cast<const uint32_t*>(p);
    } else if constexpr (D == 4) {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      words[0] = v.x;
      words[1] = v.y;
    } else {
      const uint4 v = *reinterpret_cast<const uint4*>(p);
      words[0] = v.x;
      words[1] = v.y;
      words[2] = v.z;
      words[3] = v.w;
    }
#pragma unroll
    for (int i = 0; i < D / 2; ++i) {
      const auto lo = static_cast<unsigned short>(words[i] & 0xffffu), hi = static_cast<unsigned short>(words[i] >> 16);
      if constexpr (K == KvType::f16) {
        out[2 * i] = __half2float(__ushort_as_half(lo));
        out[2 * i + 1] = __half2float(__ushort_as_half(hi));
      } else {
        out[2 * i] = __uint_as_float(static_cast<uint32_t>(lo) << 16);
        out[2 * i + 1] = __uint_as_float(static_cast<uint32_t>(hi) << 16);
      }
    }
  }
}

__device__ __forceinline__ int64_t split_length(int64_t n, int64_t target_splits, int64_t quantum = kSplitQuantum) {
  const int64_t quanta = (n + quantum - 1) / quantum;
  return quantum * ((quanta + target_splits - 1) / target_splits);
}

// Block (split, kv head, token); warp w takes query head kv_head · group + w. Each lane holds D values
// of the head (values lane·D …). partials per (token, head, split): max, sum, then head_dim weighted
// values; with one split the normalised output goes straight to out.
template <KvType K, int D>
__global__ void split_kernel(PagedKv kv, DeviceBatch batch, const float* q, int64_t heads, int64_t kv_heads,
                             float softmax_scale, int64_t target_splits, int64_t split_stride, float* partials,
                             float* out) {
  wait_for_prior_grids();
  constexpr int64_t head_dim = 32 * D;
  const int64_t t = blockIdx.z, g = blockIdx.y, split = blockIdx.x;
  const int lane = threadIdx.x % 32;
  const int64_t group = heads / kv_heads, h = g * group + threadIdx.x / 32;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits);
  const int64_t splits = (n + len - 1) / len;
  if (split >= splits) return;
  const int64_t begin = split * len, end = begin + len < n ? begin + len : n;
  float qv[D], acc[D];
  const float* qh = q + (t * heads + h) * head_dim + lane * D;
#pragma unroll
  for (int i = 0; i < D; ++i) {
    qv[i] = qh[i];
    acc[i] = 0.f;
  }
  const int64_t first = g * head_dim + lane * D, width = kv_heads * head_dim;  // this lane's values of a row
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  const auto* base = static_cast<const uint8_t*>(kv.layer_base);
  float m = -INFINITY, l = 0.f;
  for (int64_t s0 = begin; s0 < end; s0 += kPositionsInFlight) {
    float kx[kPositionsInFlight][D], vx[kPositionsInFlight][D];
    // s0 and its next three positions share a cache block (splits and steps are multiples of 4 ≤ 16)
    const uint8_t* blk = base + static_cast<int64_t>(table[s0 / kv.block_tokens]) * kv.block_stride;
#pragma unroll
    for (int p = 0; p < kPositionsInFlight; ++p) {
      const int64_t s = s0 + p < end ? s0 + p : end - 1;
      const int64_t slot = s % kv.block_tokens;
      load_slice<K, D>(blk + slot * kv.row_bytes, first, width, kx[p]);
      load_slice<K, D>(blk + (kv.block_tokens + slot) * kv.row_bytes, first, width, vx[p]);
    }
    float score[kPositionsInFlight];
    float step_max = m;
#pragma unroll
    for (int p = 0; p < kPositionsInFlight; ++p) {
      float d = 0.f;
#pragma unroll
      for (int i = 0; i < D; ++i) d += qv[i] * kx[p][i];
      score[p] = s0 + p < end ? __fmul_rn(warp_sum(d), softmax_scale) : -INFINITY;
      step_max = fmaxf(step_max, score[p]);
    }
    const float correction = expf(m - step_max);  // 0 on the first step (m = -inf)
    l *= correction;
#pragma unroll
    for (int i = 0; i < D; ++i) acc[i] *= correction;
#pragma unroll
    for (int p = 0; p < kPositionsInFlight; ++p) {
      const float e = expf(score[p] - step_max);  // 0 past the end
      l += e;
#pragma unroll
      for (int i = 0; i < D; ++i) acc[i] += e * vx[p][i];
    }
    m = step_max;
  }
  if (splits == 1) {
    float* o = out + (t * heads + h) * head_dim + lane * D;
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < D; ++i) o[i] = acc[i] * inv;
    return;
  }
  float* part = partials + ((t * heads + h) * split_stride + split) * (head_dim + 2);
  if (lane == 0) {
    part[0] = m;
    part[1] = l;
  }
#pragma unroll
  for (int i = 0; i < D; ++i) part[2 + lane * D + i] = acc[i];
}

// out[t, h] = Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s over the token's splits; a block per
// (token, head), a thread per value. Tokens whose context fit one split were written already.
__global__ void merge_kernel(DeviceBatch batch, int64_t heads, int64_t head_dim, int64_t target_splits,
                             int64_t quantum, int64_t split_stride, const float* partials, float* out) {
  wait_for_prior_grids();
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits, quantum);
  const int64_t splits = (n + len - 1) / len;
  if (splits == 1) return;
  const float* part = partials + (t * heads + h) * split_stride * (head_dim + 2);
  float m = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) m = fmaxf(m, part[s * (head_dim + 2)]);
  float l = 0.f;
  for (int64_t s = 0; s < splits; ++s) l += expf(part[s * (head_dim + 2)] - m) * part[s * (head_dim + 2) + 1];
  const float inv = 1.f / l;
  for (int64_t i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float acc = 0.f;
    for (int64_t s = 0; s < splits; ++s) acc += expf(part[s * (head_dim + 2)] - m) * part[s * (head_dim + 2) + 2 + i];
    out[(t * heads + h) * head_dim + i] = acc * inv;
  }
}

int64_t target_splits(int64_t tokens, int64_t kv_heads) {
  return std::max<int64_t>(1, (kTargetBlocks + tokens * kv_heads - 1) / (tokens * kv_heads));
}

// Splits the grid provides room for: enough for any context up to max_context.
int64_t split_slots(const DeviceBatch& b, int64_t kv_heads) {
  return std::min(target_splits(b.tokens, kv_heads), (b.max_context + kSplitQuantum - 1) / kSplitQuantum);
}


// Absorbed MLA (one latent plane shared by every head, as MQA): block (split, group of kMlaHeads query
// heads, token). Each step stages kMlaTile cached rows (latent + rope key) in shared memory as floats;
// warp w scores them for head w (lane = position) and updates that head's running max and sum; then
// every thread adds the tile's weighted latent values for kMlaMaxValues columns of all the group's
// heads. A cached row is read from memory once per group instead of once per head and position.
constexpr int kMlaHeads = 8;
constexpr int kMlaThreads = 32 * kMlaHeads;
constexpr int kMlaTile = 32;        // positions per step (splits are multiples of it)
constexpr int kMlaMaxValues = 4;    // latent columns per thread: kv_lora ≤ 4 · kMlaThreads
constexpr int64_t kMlaMaxWidth = 4 * kMlaThreads + 128;  // latent + rope key

int64_t mla_groups(int64_t heads) { return (heads + kMlaHeads - 1) / kMlaHeads; }
int64_t mla_target_splits(int64_t tokens, int64_t heads) {
  const int64_t blocks = tokens * mla_groups(heads);
  return std::max<int64_t>(1, (kTargetBlocks + blocks - 1) / blocks);
}
int64_t mla_split_slots(const DeviceBatch& b, int64_t heads) {
  return std::min(mla_target_splits(b.tokens, heads), (b.max_context + kMlaTile - 1) / kMlaTile);
}
size_t mla_shared_bytes(int64_t width) {
  return static_cast<size_t>(kMlaHeads * width + kMlaTile * (width + 1) + kMlaHeads * kMlaTile + 2 * kMlaHeads) *
         sizeof(float);
}

template <KvType K>
__global__ void __launch_bounds__(kMlaThreads)
    mla_split_kernel(PagedKv kv, DeviceBatch batch, const float* q_latent, const float* q_rope, int64_t heads,
                     int kv_lora, int rope_dim, float softmax_scale, int64_t target_splits, int64_t split_stride,
                     float* partials, float* out) {
  extern __shared__ float smem[];
  const int width = kv_lora + rope_dim, ld = width + 1;  // odd row stride: lanes on different rows, no conflicts
  float* qs = smem;                          // [kMlaHeads][width]
  float* ks = qs + kMlaHeads * width;        // [kMlaTile][ld]
  float* ps = ks + kMlaTile * ld;            // [kMlaHeads][kMlaTile] this tile's e^(score − max)
  float* rescale = ps + kMlaHeads * kMlaTile;  // [kMlaHeads]
  float* sums = rescale + kMlaHeads;           // [kMlaHeads]
  const int64_t t = blockIdx.z, h0 = static_cast<int64_t>(blockIdx.y) * kMlaHeads, split = blockIdx.x;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits, kMlaTile);
  const int64_t splits = (n + len - 1) / len;
  if (split >= splits) return;
  const int64_t begin = split * len, end = begin + len < n ? begin + len : n;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool head_valid = h0 + warp < heads;
  for (int i = threadIdx.x; i < kMlaHeads * width; i += kMlaThreads) {
    const int64_t h = h0 + i / width;
    const int c = i % width;
    qs[i] = h >= heads ? 0.f
            : c < kv_lora ? q_latent[(t * heads + h) * kv_lora + c]
                          : q_rope[(t * heads + h) * rope_dim + (c - kv_lora)];
  }
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  const auto* base = static_cast<const uint8_t*>(kv.layer_base);
  float acc[kMlaHeads][kMlaMaxValues] = {};
  float m = -INFINITY, l = 0.f;  // this warp's head
  for (int64_t s0 = begin; s0 < end; s0 += kMlaTile) {
    const int count = static_cast<int>(end - s0 < kMlaTile ? end - s0 : kMlaTile);
    __syncthreads();  // the previous tile's readers are done (and qs is staged)
    for (int p = warp; p < count; p += kMlaHeads) {
      const int64_t s = s0 + p;
      const uint8_t* row = base + static_cast<int64_t>(table[s / kv.block_tokens]) * kv.block_stride +
                           (s % kv.block_tokens) * kv.row_bytes;  // plane 0
      for (int c = lane; c < width; c += 32) ks[p * ld + c] = kv_value<K>(row, c, kv_lora);
    }
    __syncthreads();
    float score = -INFINITY;
    if (head_valid && lane < count) {
      const float* qh = qs + warp * width;
      const float* kp = ks + lane * ld;
      float latent = 0.f, rope = 0.f;
      for (int c = 0; c < kv_lora; ++c) latent += qh[c] * kp[c];
      for (int c = kv_lora; c < width; ++c) rope += qh[c] * kp[c];
      score = __fmul_rn(__fadd_rn(latent, rope), softmax_scale);
    }
    const float m_new = fmaxf(m, warp_max(score));
    const float e = score == -INFINITY ? 0.f : expf(score - m_new);
    const float correction = m == -INFINITY ? 0.f : expf(m - m_new);
    l = l * correction + warp_sum(e);
    m = m_new;
    ps[warp * kMlaTile + lane] = e;
    if (lane == 0) rescale[warp] = correction;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMlaMaxValues; ++j) {
      const int c = threadIdx.x + j * kMlaThreads;
      if (c < kv_lora) {
#pragma unroll
        for (int h = 0; h < kMlaHeads; ++h) acc[h][j] *= rescale[h];
        for (int p = 0; p < count; ++p) {
          const float v = ks[p * ld + c];
#pragma unroll
          for (int h = 0; h < kMlaHeads; ++h) acc[h][j] += ps[h * kMlaTile + p] * v;
        }
      }
    }
  }
  if (lane == 0) sums[warp] = l;
  if (splits > 1 && head_valid && lane < 2) {
    float* part = partials + ((t * heads + h0 + warp) * split_stride + split) * (kv_lora + 2);
    part[lane] = lane == 0 ? m : l;
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
    if (h0 + h >= heads) break;
    const float inv = 1.f / sums[h];
#pragma unroll
    for (int j = 0; j < kMlaMaxValues; ++j) {
      const int c = threadIdx.x + j * kMlaThreads;
      if (c >= kv_lora) continue;
      if (splits == 1) out[(t * heads + h0 + h) * kv_lora + c] = acc[h][j] * inv;
      else partials[((t * heads + h0 + h) * split_stride + split) * (kv_lora + 2) + 2 + c] = acc[h][j];
    }
  }
}

}  // namespace

bool split_attention_supported(int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               const PagedKv& kv) {
  const bool type = kv.type == KvType::f32 || kv.type == KvType::f16 || kv.type == KvType::bf16 ||
                    kv_quantised(kv.type);
  return type && (head_dim == 64 || head_dim == 128 || head_dim == 256) && kv_heads > 0 && heads % kv_heads == 0 &&
         heads / kv_heads <= 32 && kv.block_tokens % kSplitQuantum == 0 && tokens <= 65535 && kv_heads <= 65535;
}

int64_t split_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t slots = split_slots(b, kv_heads);
  return slots > 1 ? b.tokens * heads * slots * (head_dim + 2) : 0;
}

void split_gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scratch, float* out) {
  const int64_t slots = split_slots(batch, kv_heads), target = target_splits(batch.tokens, kv_heads);
  const dim3 grid(static_cast<unsigned>(slots), static_cast<unsigned>(kv_heads), static_cast<unsigned>(batch.tokens));
  const auto threads = static_cast<unsigned>(32 * (heads / kv_heads));
  auto launch = [&](auto k, auto d) {
    launch_dependent(stream, "gqa_attention (splits)", split_kernel<decltype(k)::value, decltype(d)::value>, grid,
                     threads, 0, kv, batch, q, heads, kv_heads, softmax_scale, target, slots, scratch, out);
  };
  auto by_dim = [&](auto k) {
    if (head_dim == 64) launch(k, std::integral_constant<int, 2>{});
    else if (head_dim == 128) launch(k, std::integral_constant<int, 4>{});
    else launch(k, std::integral_constant<int, 8>{});
  };
  switch (kv.type) {
    case KvType::f32: by_dim(std::integral_constant<KvType, KvType::f32>{}); break;
    case KvType::f16: by_dim(std::integral_constant<KvType, KvType::f16>{}); break;
    case KvType::fp8: by_dim(std::integral_constant<KvType, KvType::fp8>{}); break;
    case KvType::int8: by_dim(std::integral_constant<KvType, KvType::int8>{}); break;
    default: by_dim(std::integral_constant<KvType, KvType::bf16>{}); break;
  }
  check_launch("gqa_attention (splits)");
  if (slots > 1) {
    launch_dependent(stream, "gqa_attention (merge)", merge_kernel, grid_dim(batch.tokens * heads, "gqa_attention (merge)"),
                     128, 0, batch, heads, head_dim, target, kSplitQuantum, slots, scratch, out);
  }
}

bool split_mla_supported(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv) {
  const bool type = kv.type == KvType::f32 || kv.type == KvType::f16 || kv.type == KvType::bf16 ||
                    kv_quantised(kv.type);
  return type && kv_lora > 0 && kv_lora <= kMlaMaxValues * kMlaThreads && rope_dim >= 0 &&
         kv_lora + rope_dim <= kMlaMaxWidth && tokens <= 65535 && mla_groups(heads) <= 65535;
}

int64_t split_mla_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_lora) {
  const int64_t slots = mla_split_slots(b, heads);
  return slots > 1 ? b.tokens * heads * slots * (kv_lora + 2) : 0;
}

void split_mla_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                         const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                         float* scratch, float* out) {
  const int64_t slots = mla_split_slots(batch, heads), target = mla_target_splits(batch.tokens, heads);
  const dim3 grid(static_cast<unsigned>(slots), static_cast<unsigned>(mla_groups(heads)),
                  static_cast<unsigned>(batch.tokens));
  const size_t shared = mla_shared_bytes(kv_lora + rope_dim);
  auto launch = [&](auto k) {
    auto* kernel = mla_split_kernel<decltype(k)::value>;
    // Above 48 KiB of dynamic shared memory a kernel must opt in (DeepSeek's 576-wide rows take ~93 KiB).
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)) !=
        cudaSuccess)
      check_launch("mla_attention (shared memory opt-in)");
    kernel<<<grid, kMlaThreads, shared, native(stream)>>>(kv, batch, q_latent, q_rope, heads,
                                                          static_cast<int>(kv_lora), static_cast<int>(rope_dim),
                                                          softmax_scale, target, slots, scratch, out);
  };
  switch (kv.type) {
    case KvType::f32: launch(std::integral_constant<KvType, KvType::f32>{}); break;
    case KvType::f16: launch(std::integral_constant<KvType, KvType::f16>{}); break;
    case KvType::fp8: launch(std::integral_constant<KvType, KvType::fp8>{}); break;
    case KvType::int8: launch(std::integral_constant<KvType, KvType::int8>{}); break;
    default: launch(std::integral_constant<KvType, KvType::bf16>{}); break;
  }
  check_launch("mla_attention (splits)");
  if (slots > 1) {
    merge_kernel<<<grid_dim(batch.tokens * heads, "mla_attention (merge)"), 128, 0, native(stream)>>>(
        batch, heads, kv_lora, target, kMlaTile, slots, scratch, out);
    check_launch("mla_attention (merge)");
  }
}

}  // namespace tandem::cuda::detail
