// GQA attention over the paged cache as split-K flash decoding: a block per (token, KV head, split of
// the positions) with one warp per query head of the group; the KV head's slice of each cached row
// is copied into shared memory as stored (cp.async, three tiles of 16 positions in flight ahead of the
// one being read), so every row is read from memory once per block and shared by the group's heads;
// each warp keeps a running softmax (max, sum, weighted values) over its split; a second kernel
// merges the splits. The split length depends only on the token's own context length, the KV heads
// and the batch size (never on the capacity the batch was sized for), so a recorded pass and an eager
// one split alike and give the same bits. Absorbed MLA (mla_split_kernel below) splits the same way,
// its blocks sharing each staged latent row among eight query heads; for f16/bf16 caches of DeepSeek's
// shapes split_mla_attention runs the tensor-core kernel of mla_tensor_cores.cu instead (this one
// stays the reference and the fallback; TANDEM_CUDA_MLA_TC=0 forces it), and both leave their
// partials for the same merge_kernel. fp8/int8 rows are dequantised as they are read (each code
// times its group's f16 scale, in registers or the staged tile).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "mla_tensor_cores.cuh"
#include "mma.cuh"
#include "split_attention.cuh"

namespace tandem::cuda::detail {
namespace {

constexpr int64_t kSplitQuantum = 16;  // positions; splits start on block_tokens-sized boundaries
constexpr int64_t kTargetBlocks = 528;  // ~4 blocks per SM of an H200

__device__ __forceinline__ int64_t split_length(int64_t n, int64_t target_splits, int64_t quantum = kSplitQuantum) {
  return split_positions(n, target_splits, quantum);
}

// Block (split, kv head, token); warp w takes query head kv_head · group + w, lane its D values
// (lane·D …) of the head. The block's KV head slice of each cached row — its K and V values, and for
// fp8/int8 their group scales — is copied into shared memory as stored, a tile of kTile positions at
// a time (cp.async), kStages − 1 tiles in flight ahead of the one the warps read: each row is read
// from memory once per block, not once per warp, and the copies overlap the arithmetic. A warp
// scores a tile's positions with one reduce-scatter over its lanes (lane pair 2p, 2p + 1 ends with
// position p's dot product) instead of one full reduction per position. partials per (token, head,
// split): max, sum, then head_dim weighted values; with one split the normalised output goes straight
// to out.
constexpr int kTile = 16;   // positions per tile: a split's tiles start on multiples of 16, inside one cache block
constexpr int kStages = 4;  // tiles in shared memory: one read, three in flight

template <KvType K>
constexpr int kv_value_bytes() {
  return K == KvType::f32 ? 4 : kv_quantised(K) ? 1 : 2;
}

// Shared bytes of one stage for a head of 32·D values: K and V slices of kTile rows, then (fp8/int8)
// their D group scales each (f16).
template <KvType K, int D>
constexpr int stage_bytes() {
  return 2 * kTile * 32 * D * kv_value_bytes<K>() + (kv_quantised(K) ? 2 * kTile * D * 2 : 0);
}

// Value i (of D) of this lane's slice of row r of a stage, as float.
template <KvType K, int D>
__device__ __forceinline__ void stage_values(const uint8_t* stage, int r, int lane, float* out) {
  constexpr int slice = 32 * D * kv_value_bytes<K>();
  const uint8_t* p = stage + r * slice + lane * D * kv_value_bytes<K>();
  if constexpr (K == KvType::f32) {
#pragma unroll
    for (int i = 0; i < D; i += 2) {
      const float2 v = reinterpret_cast<const float2*>(p)[i / 2];
      out[i] = v.x;
      out[i + 1] = v.y;
    }
  } else if constexpr (K == KvType::f16 || K == KvType::bf16) {
    uint32_t words[D / 2];  // one shared load of the lane's D values
    if constexpr (D == 8) {
      const uint4 v = *reinterpret_cast<const uint4*>(p);
      words[0] = v.x;
      words[1] = v.y;
      words[2] = v.z;
      words[3] = v.w;
    } else if constexpr (D == 4) {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      words[0] = v.x;
      words[1] = v.y;
    } else {
      words[0] = *reinterpret_cast<const uint32_t*>(p);
    }
#pragma unroll
    for (int i = 0; i < D; i += 2) {
      const uint32_t w = words[i / 2];
      if constexpr (K == KvType::f16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
        out[i] = f.x;
        out[i + 1] = f.y;
      } else {
        out[i] = __uint_as_float(w << 16);
        out[i + 1] = __uint_as_float(w & 0xffff0000u);
      }
    }
  } else {
    // The lane's D codes lie in one 32-value group: (lane · D) / 32 of the head's D groups.
    const uint16_t* scales = reinterpret_cast<const uint16_t*>(stage + 2 * kTile * slice);
    const float scale = f16_bits_to_float(scales[r * D + lane * D / 32]);
    uint32_t packed[(D + 3) / 4];  // the D codes in one shared load (the slot is D-byte aligned)
    if constexpr (D == 8) {
      const uint2 w = *reinterpret_cast<const uint2*>(p);
      packed[0] = w.x;
      packed[1] = w.y;
    } else if constexpr (D == 4) {
      packed[0] = *reinterpret_cast<const uint32_t*>(p);
    } else {
      packed[0] = *reinterpret_cast<const uint16_t*>(p);
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
  }
}

// Starts copying tile [s0, s0 + kTile) of this block's KV head into `stage` (positions past `end` repeat
// end − 1, whose scores are masked). kChunk: bytes per cp.async of the values (16 where every row
// address is 16-byte aligned, else 4); scales go 4 bytes at a time.
template <KvType K, int D, int kChunk>
__device__ __forceinline__ void copy_tile(uint8_t* stage, const PagedKv& kv, const int32_t* table, int64_t s0,
                                          int64_t end, int64_t g, int64_t width) {
  constexpr int slice = 32 * D * kv_value_bytes<K>();
  constexpr int chunks_per_row = slice / kChunk;
  const uint8_t* blk = static_cast<const uint8_t*>(kv.layer_base) +
                       static_cast<int64_t>(table[s0 / kv.block_tokens]) * kv.block_stride;
  const int64_t slot0 = s0 % kv.block_tokens, last = end - 1 - s0;
  const int threads = static_cast<int>(blockDim.x);
  for (int c = static_cast<int>(threadIdx.x); c < 2 * kTile * chunks_per_row; c += threads) {
    const int r = c / chunks_per_row, piece = c % chunks_per_row;  // r: plane · kTile + position
    const int plane = r / kTile;
    const int64_t pos = (r % kTile) <= last ? r % kTile : last;
    const uint8_t* src = blk + (plane * kv.block_tokens + slot0 + pos) * kv.row_bytes +
                         g * slice + piece * kChunk;
    uint8_t* dst = stage + r * slice + piece * kChunk;
    if constexpr (kChunk == 16) copy_async16(dst, src);
    else copy_async4(dst, src);
  }
  if constexpr (kv_quantised(K)) {
    constexpr int scale_words = D / 2;  // D f16 scales per row and head: D · 2 bytes in 4-byte words
    uint8_t* scales = stage + 2 * kTile * slice;
    for (int c = static_cast<int>(threadIdx.x); c < 2 * kTile * scale_words; c += threads) {
      const int r = c / scale_words, word = c % scale_words;
      const int plane = r / kTile;
      const int64_t pos = (r % kTile) <= last ? r % kTile : last;
      const uint8_t* src = blk + (plane * kv.block_tokens + slot0 + pos) * kv.row_bytes + width + g * D * 2 + word * 4;
      copy_async4(scales + r * D * 2 + word * 4, src);
    }
  }
}

// One step of the reduce-scatter over lane bit 2·Half: values [0, 2·Half) → [0, Half).
template <int Half>
__device__ __forceinline__ void scatter_step(float* d, int lane) {
  const bool upper = lane & (2 * Half);
#pragma unroll
  for (int j = 0; j < Half; ++j) {
    const float keep = upper ? d[j + Half] : d[j], give = upper ? d[j] : d[j + Half];
    d[j] = keep + __shfl_xor_sync(0xffffffffu, give, 2 * Half);
  }
}

template <KvType K, int D, int kChunk>
__global__ void __launch_bounds__(1024)
    split_kernel(PagedKv kv, DeviceBatch batch, const float* q, int64_t heads, int64_t kv_heads, float softmax_scale,
                 int64_t target_splits, int64_t split_stride, float* partials, float* out) {
  extern __shared__ __align__(16) uint8_t stages[];
  wait_for_prior_grids();
  constexpr int64_t head_dim = 32 * D;
  constexpr int kStage = stage_bytes<K, D>();
  const int64_t t = blockIdx.z, g = blockIdx.y, split = blockIdx.x;
  const int lane = threadIdx.x % 32;
  const int64_t group = heads / kv_heads, h = g * group + threadIdx.x / 32;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits);
  const int64_t splits = (n + len - 1) / len;
  if (split >= splits) return;
  const int64_t begin = split * len, end = begin + len < n ? begin + len : n;
  const int64_t width = kv_heads * head_dim;
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  const int tiles = static_cast<int>((end - begin + kTile - 1) / kTile);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < tiles) copy_tile<K, D, kChunk>(stages + i * kStage, kv, table, begin + i * kTile, end, g, width);
    commit_copies();  // an empty group past the last tile keeps the count the waits below assume
  }
  float qv[D], acc[D];
  const float* qh = q + (t * heads + h) * head_dim + lane * D;
#pragma unroll
  for (int i = 0; i < D; ++i) {
    qv[i] = qh[i];
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;  // l: this lane's share (lanes 2p), summed over the warp at the end
  const int my_position = (lane >> 1) & (kTile - 1);
  for (int tile = 0; tile < tiles; ++tile) {
    wait_copies<kStages - 2>();  // this tile's copies are done (this thread's; the barrier: everyone's)
    __syncthreads();             // and every warp is done with the stage the next copy overwrites
    if (tile + kStages - 1 < tiles)
      copy_tile<K, D, kChunk>(stages + ((tile + kStages - 1) % kStages) * kStage, kv, table,
                              begin + static_cast<int64_t>(tile + kStages - 1) * kTile, end, g, width);
    commit_copies();
    const uint8_t* stage = stages + (tile % kStages) * kStage;
    const int64_t s0 = begin + static_cast<int64_t>(tile) * kTile;
    float d[kTile];
#pragma unroll
    for (int p = 0; p < kTile; ++p) {
      float kx[D];
      stage_values<K, D>(stage, p, lane, kx);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < D; ++i) dot += qv[i] * kx[i];
      d[p] = dot;
    }
    // Reduce-scatter: after the step over lane bit 2·half (16, 8, 4, 2) a lane keeps the half of its
    // values its bit selects, plus its partner's of that half; the last step (bit 1) sums a pair.
    scatter_step<8>(d, lane);
    scatter_step<4>(d, lane);
    scatter_step<2>(d, lane);
    scatter_step<1>(d, lane);
    const float dot = d[0] + __shfl_xor_sync(0xffffffffu, d[0], 1);  // position my_position's q·k
    const float score = s0 + my_position < end ? __fmul_rn(dot, softmax_scale) : -INFINITY;
    const float step_max = fmaxf(m, warp_max(score));
    const float correction = expf(m - step_max);  // 0 on the first tile (m = -inf)
    const float e = expf(score - step_max);        // 0 past the end
    l = l * correction + ((lane & 1) == 0 ? e : 0.f);
#pragma unroll
    for (int i = 0; i < D; ++i) acc[i] *= correction;
#pragma unroll
    for (int p = 0; p < kTile; ++p) {
      const float ep = __shfl_sync(0xffffffffu, e, 2 * p);
      float vx[D];
      stage_values<K, D>(stage, kTile + p, lane, vx);
#pragma unroll
      for (int i = 0; i < D; ++i) acc[i] += ep * vx[i];
    }
    m = step_max;
  }
  wait_copies<0>();  // no copy may land in shared memory after the block is gone
  l = warp_sum(l);
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
// (token, head). The splits' weights e^(m_s − M) are computed once, into shared memory; then the
// block's threads form `groups` sets of head_dim (as many as fit), set g adding the splits
// s ≡ g (mod groups) for its value, so one token's 132 splits (a long context) are read ~33 loads
// deep per thread instead of 132; the sets' sums are added in set order. Many tokens have few splits
// each and many blocks: 128 threads a block there. Tokens whose context fit one split were written
// already.
constexpr int kMergeThreads = 512;

unsigned merge_threads(int64_t split_stride) { return split_stride >= 32 ? kMergeThreads : 128; }

size_t merge_shared_bytes(int64_t split_stride) {
  return static_cast<size_t>(split_stride + kMergeThreads + 32) * sizeof(float);
}

__global__ void __launch_bounds__(kMergeThreads)
    merge_kernel(DeviceBatch batch, int64_t heads, int64_t head_dim, int64_t target_splits, int64_t quantum,
                 int64_t split_stride, const float* partials, float* out) {
  extern __shared__ float merge_shared[];
  float* weight = merge_shared;                       // [split_stride]
  float* sums = merge_shared + split_stride;          // [groups · head_dim] (≤ kMergeThreads)
  float* scratch = sums + kMergeThreads;              // [32]
  wait_for_prior_grids();
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_length(n, target_splits, quantum);
  const int64_t splits = (n + len - 1) / len;
  if (splits == 1) return;
  const int64_t stride = head_dim + 2;
  const float* part = partials + (t * heads + h) * split_stride * stride;
  float m = -INFINITY;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) m = fmaxf(m, part[s * stride]);
  m = block_max(m, scratch);
  float l = 0.f;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) {
    const float w = expf(part[s * stride] - m);
    weight[s] = w;
    l += w * part[s * stride + 1];
  }
  l = block_sum(l, scratch);  // its barriers also publish `weight`
  const float inv = 1.f / l;
  const int64_t groups = head_dim < blockDim.x ? blockDim.x / head_dim : 1;
  const int64_t g = threadIdx.x / (blockDim.x / groups), first = threadIdx.x % (blockDim.x / groups);
  float* o = out + (t * heads + h) * head_dim;
  if (groups == 1) {
    for (int64_t i = threadIdx.x; i < head_dim; i += blockDim.x) {
      float acc = 0.f;
#pragma unroll 4
      for (int64_t s = 0; s < splits; ++s) acc += weight[s] * part[s * stride + 2 + i];
      o[i] = acc * inv;
    }
    return;
  }
  if (g < groups && first < head_dim) {
    float acc = 0.f;
#pragma unroll 4
    for (int64_t s = g; s < splits; s += groups) acc += weight[s] * part[s * stride + 2 + first];
    sums[g * head_dim + first] = acc;
  }
  __syncthreads();
  if (g == 0 && first < head_dim) {
    float acc = 0.f;
    for (int64_t k = 0; k < groups; ++k) acc += sums[k * head_dim + first];
    o[first] = acc * inv;
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
  // 16-byte copies where every row's slice starts 16-byte aligned; else 4-byte ones.
  const auto aligned16 = [&](int64_t value_bytes) {
    return reinterpret_cast<uintptr_t>(kv.layer_base) % 16 == 0 && kv.block_stride % 16 == 0 &&
           kv.row_bytes % 16 == 0 && (head_dim * value_bytes) % 16 == 0;
  };
  auto launch = [&](auto k, auto d, auto chunk) {
    constexpr KvType K = decltype(k)::value;
    constexpr int D = decltype(d)::value;
    auto* kernel = split_kernel<K, D, decltype(chunk)::value>;
    constexpr int shared = kStages * stage_bytes<K, D>();
    // Above 48 KiB of dynamic shared memory a kernel must opt in (f32 rows of 256 values: 128 KiB).
    if (shared > 48 * 1024 &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared) != cudaSuccess)
      check_launch("gqa_attention (shared memory opt-in)");
    launch_dependent(stream, "gqa_attention (splits)", kernel, grid, threads, static_cast<size_t>(shared), kv, batch,
                     q, heads, kv_heads, softmax_scale, target, slots, scratch, out);
  };
  auto by_chunk = [&](auto k, auto d) {
    if (aligned16(kv_value_bytes<decltype(k)::value>())) launch(k, d, std::integral_constant<int, 16>{});
    else launch(k, d, std::integral_constant<int, 4>{});
  };
  auto by_dim = [&](auto k) {
    if (head_dim == 64) by_chunk(k, std::integral_constant<int, 2>{});
    else if (head_dim == 128) by_chunk(k, std::integral_constant<int, 4>{});
    else by_chunk(k, std::integral_constant<int, 8>{});
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
                     merge_threads(slots), merge_shared_bytes(slots), batch, heads, head_dim, target, kSplitQuantum,
                     slots, scratch, out);
  }
}

bool split_mla_supported(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv) {
  const bool type = kv.type == KvType::f32 || kv.type == KvType::f16 || kv.type == KvType::bf16 ||
                    kv_quantised(kv.type);
  return type && kv_lora > 0 && kv_lora <= kMlaMaxValues * kMlaThreads && rope_dim >= 0 &&
         kv_lora + rope_dim <= kMlaMaxWidth && tokens <= 65535 && mla_groups(heads) <= 65535;
}

// Room for either kernel's partials (the tensor-core kernel's groups of up to 64 heads take more
// splits than the 8-head groups here): which one runs depends on the cache kind, not known here.
int64_t split_mla_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_lora) {
  const int64_t slots = std::max(mla_split_slots(b, heads), mla_tensor_cores_split_slots(b, heads));
  return slots > 1 ? b.tokens * heads * slots * (kv_lora + 2) : 0;
}

bool split_mla_tensor_cores(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv) {
  return mla_tensor_cores_enabled() && mla_tensor_cores_supported(tokens, heads, kv_lora, rope_dim, kv);
}

void split_mla_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                         const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                         float* scratch, float* out) {
  if (split_mla_tensor_cores(batch.tokens, heads, kv_lora, rope_dim, kv)) {
    const int64_t slots = mla_tensor_cores_split_slots(batch, heads);
    const int64_t target = mla_tensor_cores_target_splits(batch.tokens, heads);
    mla_tensor_cores_splits(stream, kv, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, target, slots,
                            scratch, out);
    if (slots > 1)
      launch_dependent(stream, "mla_attention (tensor cores: merge)", merge_kernel,
                       dim3(grid_dim(batch.tokens * heads, "mla_attention (merge)")), dim3(merge_threads(slots)),
                       merge_shared_bytes(slots), batch, heads, kv_lora, target, kMlaTcTile, slots, scratch, out);
    return;
  }
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
    merge_kernel<<<grid_dim(batch.tokens * heads, "mla_attention (merge)"), merge_threads(slots),
                   merge_shared_bytes(slots), native(stream)>>>(
        batch, heads, kv_lora, target, kMlaTile, slots, scratch, out);
    check_launch("mla_attention (merge)");
  }
}

}  // namespace tandem::cuda::detail

namespace tandem::cuda {

bool mla_attention_tensor_cores(const DeviceBatch& b, int64_t heads, int64_t kv_lora, int64_t rope_dim,
                                const PagedKv& kv) {
  return b.tokens > 0 && detail::split_mla_supported(b.tokens, heads, kv_lora, rope_dim, kv) &&
         detail::split_mla_tensor_cores(b.tokens, heads, kv_lora, rope_dim, kv);
}

}  // namespace tandem::cuda
