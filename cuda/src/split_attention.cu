// GQA attention over the paged cache as split-K flash decoding: a block per (token, KV head, split of
// the positions) with one warp per query head of the group, so every cached K/V row is read once per
// block and shared by the group's heads; each warp keeps a running softmax (max, sum, weighted values)
// over its split with four positions' K and V loads in flight at a time; a second kernel merges the
// splits. The split length depends only on the token's own context length, the KV heads and the
// batch size (never on the capacity the batch was sized for), so a recorded pass and an eager one
// split alike and give the same bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "launch.cuh"
#include "split_attention.cuh"

namespace tandem::cuda::detail {
namespace {

constexpr int kPositionsInFlight = 4;
constexpr int64_t kSplitQuantum = 16;  // positions; splits start on block_tokens-sized boundaries
constexpr int64_t kTargetBlocks = 528;  // ~4 blocks per SM of an H200

// D consecutive values of a K or V row as floats (one vector load of D elements).
template <KvType K, int D>
__device__ __forceinline__ void load_slice(const uint8_t* p, float* out) {
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

__device__ __forceinline__ int64_t split_length(int64_t n, int64_t target_splits) {
  const int64_t quanta = (n + kSplitQuantum - 1) / kSplitQuantum;
  return kSplitQuantum * ((quanta + target_splits - 1) / target_splits);
}

// Block (split, kv head, token); warp w takes query head kv_head · group + w. Each lane holds D values
// of the head (values lane·D …). partials per (token, head, split): max, sum, then head_dim weighted
// values; with one split the normalised output goes straight to out.
template <KvType K, int D>
__global__ void split_kernel(PagedKv kv, DeviceBatch batch, const float* q, int64_t heads, int64_t kv_heads,
                             float softmax_scale, int64_t target_splits, int64_t split_stride, float* partials,
                             float* out) {
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
  constexpr int kElem = K == KvType::f32 ? 4 : 2;
  const int64_t slice = (g * head_dim + lane * D) * kElem;  // this lane's bytes within a row
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
      load_slice<K, D>(blk + slot * kv.row_bytes + slice, kx[p]);
      load_slice<K, D>(blk + (kv.block_tokens + slot) * kv.row_bytes + slice, vx[p]);
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
                             int64_t split_stride, const float* partials, float* out) {
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits);
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

}  // namespace

bool split_attention_supported(int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               const PagedKv& kv) {
  const bool type = kv.type == KvType::f32 || kv.type == KvType::f16 || kv.type == KvType::bf16;
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
    split_kernel<decltype(k)::value, decltype(d)::value><<<grid, threads, 0, native(stream)>>>(
        kv, batch, q, heads, kv_heads, softmax_scale, target, slots, scratch, out);
  };
  auto by_dim = [&](auto k) {
    if (head_dim == 64) launch(k, std::integral_constant<int, 2>{});
    else if (head_dim == 128) launch(k, std::integral_constant<int, 4>{});
    else launch(k, std::integral_constant<int, 8>{});
  };
  if (kv.type == KvType::f32) by_dim(std::integral_constant<KvType, KvType::f32>{});
  else if (kv.type == KvType::f16) by_dim(std::integral_constant<KvType, KvType::f16>{});
  else by_dim(std::integral_constant<KvType, KvType::bf16>{});
  check_launch("gqa_attention (splits)");
  if (slots > 1) {
    merge_kernel<<<grid_dim(batch.tokens * heads, "gqa_attention (merge)"), 128, 0, native(stream)>>>(
        batch, heads, head_dim, target, slots, scratch, out);
    check_launch("gqa_attention (merge)");
  }
}

}  // namespace tandem::cuda::detail
