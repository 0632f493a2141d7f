// Causal GQA attention of one sequence's prompt chunk on the tensor cores (flash attention): a block
// of four warps takes 64 query tokens of one head, each warp 16 of them. The block walks the cached
// positions 64 at a time up to its last token's; each tile's K and V rows are copied straight from
// the paged cache into shared memory as stored (f16 or bf16, cp.async, the next tile's copy in
// flight while this one is used). Scores S = Q·Kᵀ come from mma.sync with Q in registers as the
// cache's type; the online softmax (running max and sum per row, float32) rescales the output
// accumulators; the probabilities go back into the tensor cores, in the cache's type, as the A
// operand of O += P·V without passing through shared memory. The last query tiles (the most
// positions) are started first. A chunk of few query tiles after a long cached prefix splits the
// positions among blocks (grid z), each leaving its rows unnormalised with their maximum and sum, and
// merge_splits_kernel combines them.
// MLA prompts (flash_mla_prefill) take the same kernel in multi-head form: the chunk's context is
// decompressed once through kv_b into dense K = [k_nope | k_rope] and V rows per head (in the cache's
// type), and the kernel reads those instead of the paged planes.
// An fp8/int8 cache is read as stored too, but dequantised on its way into shared memory (code ·
// group scale, rounded to f16 by half2 arithmetic; plain loads instead of cp.async), and the tiles
// multiply in f16.
// Error: K and V are used exactly (fp8/int8: rounded to f16, 2⁻¹¹ relative); Q and P are rounded to
// the cache's 16-bit type (f16 2⁻¹¹, bf16 2⁻⁸ relative), accumulation and softmax in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "mma.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kQueryTile = 64;  // query tokens per block (16 per warp)
constexpr int kKeyTile = 64;    // cached positions per step
constexpr int kThreads = 128;
constexpr int64_t kMinTokens = 64;  // fewer query tokens: the split-K kernel keeps more SMs busy
// A chunk of few query tiles after a long cached prefix (a prefix hit's suffix pass: 4 tiles × 32 heads
// over 8k positions) would leave most SMs idle with one block a tile and head: its cached positions are
// split among blocks while the grid stays within kTargetBlocks (two blocks an SM of an H100/H200 are
// resident: 192 registers a thread at head_dim 128), each split at least kMinSplitTiles key tiles, and a
// second kernel merges the splits.
constexpr int64_t kTargetBlocks = 264;
constexpr int64_t kMinSplitTiles = 4;

template <int D>
constexpr int row_stride() {  // shared row stride in 16-bit values: rows 16-byte aligned, ldmatrix conflict-free
  return D + 8;
}

using detail::mma;
using detail::pack;
using detail::quad_max;
using detail::quad_sum;

// Thread (warp w, lane 4r + c) holds rows r and r + 8 of the warp's 16 query tokens, and in each
// 8-wide column tile of S and O the columns 2c and 2c + 1 (the mma accumulator layout).
// Where a block reads position s's K and V rows for KV head g: the paged planes (GQA: plane 0 K,
// plane 1 V, the head's slice of each row) or dense rows [positions][kv_heads][Dqk or Dv] (MLA).
struct KvRows {
  PagedKv paged;
  const uint8_t* k = nullptr;  // dense only
  const uint8_t* v = nullptr;
  int kv_heads = 1;
};

// Eight values [first, first + 8) of an fp8/int8 row of `width` coded values, as f16, into 16 bytes of
// shared memory (the eight share a 32-value group: first is a multiple of 8). The value is code ·
// scale rounded once to f16: the product is exact in float32 (≤ 4 or 7 significant bits times the
// f16 scale's 11), so half2 multiplies of the codes widened to f16 give the bits the float products
// rounded to f16 give. fp8 codes widen in the hardware conversion (every e4m3 value is an f16 value),
// int8 as the f16 of 1152 + code (its bits 0x6400 | code + 128) minus 1152; the eight codes come in
// one 8-byte load where they are aligned.
template <KvType Stored>
__device__ __forceinline__ void dequantise8(const uint8_t* row, int64_t first, int64_t width, uint16_t* shared) {
  const __half scale = __ushort_as_half(detail::load_u16_bytes(row + width + 2 * (first / kKvGroupValues)));
  const __half2 scale2 = __halves2half2(scale, scale);
  const uint8_t* codes = row + first;
  uint32_t packed[2];
  if ((reinterpret_cast<uintptr_t>(codes) & 7) == 0) {
    const uint2 w = *reinterpret_cast<const uint2*>(codes);
    packed[0] = w.x;
    packed[1] = w.y;
  } else {
#pragma unroll
    for (int i = 0; i < 2; ++i)
      packed[i] = static_cast<uint32_t>(codes[4 * i]) | (static_cast<uint32_t>(codes[4 * i + 1]) << 8) |
                  (static_cast<uint32_t>(codes[4 * i + 2]) << 16) | (static_cast<uint32_t>(codes[4 * i + 3]) << 24);
  }
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t pair = (packed[i / 2] >> (16 * (i % 2))) & 0xffffu;  // codes 2i (low byte) and 2i + 1
    __half2 h;
    if constexpr (Stored == KvType::fp8) {
      h = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3));
    } else {
      const uint32_t biased = (((pair & 0xffu) | ((pair & 0xff00u) << 8)) ^ 0x00800080u) | 0x64006400u;
      h = __hsub2(*reinterpret_cast<const __half2*>(&biased), __float2half2_rn(1152.f));
    }
    h = __hmul2(h, scale2);
    words[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  *reinterpret_cast<uint4*>(shared) = make_uint4(words[0], words[1], words[2], words[3]);
}

template <bool kPaged, int Dqk, int Dv>
struct RowAddress {
  const KvRows& r;
  const int32_t* table;
  detail::BlockSlot block_slot;
  __device__ __forceinline__ RowAddress(const KvRows& rows, const int32_t* block_table)
      : r(rows), table(block_table), block_slot(rows.paged.block_tokens > 0 ? rows.paged.block_tokens : 1) {}
  __device__ __forceinline__ void operator()(int64_t s, int g, const uint8_t*& k, const uint8_t*& v) const {
    if constexpr (kPaged) {
      int b, slot;
      block_slot(s, b, slot);
      const uint8_t* block =
          static_cast<const uint8_t*>(r.paged.layer_base) + static_cast<int64_t>(table[b]) * r.paged.block_stride;
      k = block + static_cast<int64_t>(slot) * r.paged.row_bytes + static_cast<int64_t>(g) * Dqk * 2;
      v = block + static_cast<int64_t>(block_slot.tokens + slot) * r.paged.row_bytes + static_cast<int64_t>(g) * Dv * 2;
    } else {
      const int64_t row = s * r.kv_heads + g;
      k = r.k + row * Dqk * 2;
      v = r.v + row * Dv * 2;
    }
  }
};

template <int Dqk, int Dv>
constexpr size_t kernel_shared_bytes() {
  return size_t{2} * kKeyTile * (row_stride<Dqk>() + row_stride<Dv>()) * 2;  // two stages of K and V
}

// Where a split block leaves its rows (tiles > 0): per (split, token, head) the unnormalised
// output [Dv], then the running maximum (log2 units) and the sum; merge_splits_kernel combines them.
struct Splits {
  int64_t tiles = 0;  // key tiles a split covers; 0: one block covers all, out is written directly
  float* partials = nullptr;
};

template <KvType Stored, bool kPaged, int Dqk, int Dv>
__global__ void __launch_bounds__(kThreads)
    flash_kernel(KvRows rows, DeviceBatch batch, const float* q, int heads, int group, float scale_log2, Splits split,
                 float* out) {
  constexpr KvType K = detail::kv_tile_type(Stored);  // the tiles' 16-bit type
  constexpr int kLdK = row_stride<Dqk>(), kLdV = row_stride<Dv>();
  extern __shared__ uint4 shared_words[];
  auto* k_stage = reinterpret_cast<uint16_t*>(shared_words);  // [2][kKeyTile][kLdK]
  uint16_t* v_stage = k_stage + 2 * kKeyTile * kLdK;             // [2][kKeyTile][kLdV]
  const int64_t T = batch.tokens;
  const int64_t t0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kQueryTile;
  const int h = static_cast<int>(blockIdx.y), g = h / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;
  const int64_t last = t0 + kQueryTile - 1 < T ? t0 + kQueryTile - 1 : T - 1;
  const int64_t n_end = batch.positions[last] + 1;  // one sequence, increasing positions: the tile's widest
  const RowAddress<kPaged, Dqk, Dv> address{rows, batch.block_tables + last * batch.table_stride};

  const int64_t ta = t0 + warp * 16 + r, tb = ta + 8;
  // Rows past the batch attend to position 0 only (finite sums) and are not written.
  const int64_t pa = ta < T ? batch.positions[ta] : 0, pb = tb < T ? batch.positions[tb] : 0;
  const int64_t warp_last = t0 + warp * 16 + 15 < T ? t0 + warp * 16 + 15 : T - 1;
  const int64_t warp_end = t0 + warp * 16 < T ? batch.positions[warp_last] + 1 : 1;

  uint32_t qf[Dqk / 16][4];
  {
    const float* qa = q + ((ta < T ? ta : T - 1) * heads + h) * int64_t{Dqk} + 2 * c;
    const float* qb = q + ((tb < T ? tb : T - 1) * heads + h) * int64_t{Dqk} + 2 * c;
#pragma unroll
    for (int kk = 0; kk < Dqk / 16; ++kk) {
      const float2 a0 = *reinterpret_cast<const float2*>(qa + 16 * kk);
      const float2 b0 = *reinterpret_cast<const float2*>(qb + 16 * kk);
      const float2 a1 = *reinterpret_cast<const float2*>(qa + 16 * kk + 8);
      const float2 b1 = *reinterpret_cast<const float2*>(qb + 16 * kk + 8);
      qf[kk][0] = pack<K>(a0.x, a0.y);
      qf[kk][1] = pack<K>(b0.x, b0.y);
      qf[kk][2] = pack<K>(a1.x, a1.y);
      qf[kk][3] = pack<K>(b1.x, b1.y);
    }
  }

  // Tile positions past n_end copy row n_end − 1 (a block the table holds); the mask drops them.
  auto copy_tile = [&](int64_t s0, int stage) {
    constexpr int kChunksK = Dqk * 2 / 16, kChunks = kChunksK + Dv * 2 / 16;  // 16-byte pieces of a K and V row
    if constexpr (detail::kv_quantised(Stored)) {  // paged GQA rows (Dqk == Dv), kv_heads · Dqk coded values
      const int64_t width = static_cast<int64_t>(rows.kv_heads) * Dqk;
      const auto* base = static_cast<const uint8_t*>(rows.paged.layer_base);
      for (int i = threadIdx.x; i < kKeyTile * kChunks; i += kThreads) {
        const int row = i / kChunks, chunk = i % kChunks;
        const int64_t s = s0 + row < n_end ? s0 + row : n_end - 1;
        const int32_t* table = batch.block_tables + last * batch.table_stride;
        int b, slot;
        address.block_slot(s, b, slot);
        const uint8_t* block = base + static_cast<int64_t>(table[b]) * rows.paged.block_stride;
        if (chunk < kChunksK)
          dequantise8<Stored>(block + static_cast<int64_t>(slot) * rows.paged.row_bytes, static_cast<int64_t>(g) * Dqk + chunk * 8, width,
                              k_stage + (stage * kKeyTile + row) * kLdK + chunk * 8);
        else
          dequantise8<Stored>(block + static_cast<int64_t>(address.block_slot.tokens + slot) * rows.paged.row_bytes,
                              static_cast<int64_t>(g) * Dv + (chunk - kChunksK) * 8, width,
                              v_stage + (stage * kKeyTile + row) * kLdV + (chunk - kChunksK) * 8);
      }
    } else {
      for (int i = threadIdx.x; i < kKeyTile * kChunks; i += kThreads) {
        const int row = i / kChunks, chunk = i % kChunks;
        const int64_t s = s0 + row < n_end ? s0 + row : n_end - 1;
        const uint8_t *k, *v;
        address(s, g, k, v);
        if (chunk < kChunksK)
          detail::copy_async16(k_stage + (stage * kKeyTile + row) * kLdK + chunk * 8, k + chunk * 16);
        else
          detail::copy_async16(v_stage + (stage * kKeyTile + row) * kLdV + (chunk - kChunksK) * 8,
                               v + (chunk - kChunksK) * 16);
      }
    }
    detail::commit_copies();  // fp8/int8: an empty group, so the waits below count alike for every kind
  };

  float o[Dv / 8][4];
#pragma unroll
  for (int n = 0; n < Dv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;  // in log2 units; l: this thread's columns
  const int64_t all_tiles = (n_end + kKeyTile - 1) / kKeyTile;
  const int64_t first = split.tiles > 0 ? static_cast<int64_t>(blockIdx.z) * split.tiles : 0;
  const int64_t tiles = split.tiles > 0 && first + split.tiles < all_tiles ? first + split.tiles : all_tiles;
  if (first < tiles) copy_tile(first * kKeyTile, static_cast<int>(first % 2));
  for (int64_t i = first; i < tiles; ++i) {
    if (i + 1 < tiles) {
      copy_tile((i + 1) * kKeyTile, static_cast<int>((i + 1) % 2));
      detail::wait_copies<1>();
    } else {
      detail::wait_copies<0>();
    }
    __syncthreads();
    const int64_t s0 = i * kKeyTile;
    if (s0 < warp_end) {  // else every row of this warp is causally before the tile
      const uint16_t* ks = k_stage + (i % 2) * kKeyTile * kLdK;
      const uint16_t* vs = v_stage + (i % 2) * kKeyTile * kLdV;
      float s[kKeyTile / 8][4];
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < Dqk / 16; ++kk)
#pragma unroll
        for (int p = 0; p < kKeyTile / 16; ++p) {
          uint32_t b[4];
          detail::ldmatrix_x4(ks + (p * 16 + lane % 8 + (lane / 16) * 8) * kLdK + kk * 16 + ((lane / 8) % 2) * 8, b);
          mma<K>(s[2 * p], qf[kk], b[0], b[1]);
          mma<K>(s[2 * p + 1], qf[kk], b[2], b[3]);
        }
      const bool masked = s0 + kKeyTile - 1 > pa || s0 + kKeyTile - 1 > pb;
      float mx_a = m_a, mx_b = m_b;
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[j][e] * scale_log2;
          if (masked && s0 + 8 * j + 2 * c + (e % 2) > (e < 2 ? pa : pb)) v = -INFINITY;
          s[j][e] = v;
          if (e < 2) mx_a = fmaxf(mx_a, v);
          else mx_b = fmaxf(mx_b, v);
        }
      // Finite unsplit (every row sees position 0 in the first tile); a split's row may see no position
      // of its first tiles, and then keeps a maximum of −∞ with zero sums (exponents taken from 0).
      mx_a = quad_max(mx_a);
      mx_b = quad_max(mx_b);
      const float ua = mx_a == -INFINITY ? 0.f : mx_a, ub = mx_b == -INFINITY ? 0.f : mx_b;
      const float ca = exp2f(m_a - ua), cb = exp2f(m_b - ub);  // 0 on the first tile
      m_a = mx_a;
      m_b = mx_b;
      l_a *= ca;
      l_b *= cb;
#pragma unroll
      for (int n = 0; n < Dv / 8; ++n) {
        o[n][0] *= ca;
        o[n][1] *= ca;
        o[n][2] *= cb;
        o[n][3] *= cb;
      }
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) {
        s[j][0] = exp2f(s[j][0] - ua);
        s[j][1] = exp2f(s[j][1] - ua);
        s[j][2] = exp2f(s[j][2] - ub);
        s[j][3] = exp2f(s[j][3] - ub);
        l_a += s[j][0] + s[j][1];
        l_b += s[j][2] + s[j][3];
      }
#pragma unroll
      for (int kk = 0; kk < kKeyTile / 16; ++kk) {
        // S's accumulators for columns 16kk … 16kk + 15 are, as written, P's A fragment for that k-step.
        const uint32_t a[4] = {pack<K>(s[2 * kk][0], s[2 * kk][1]), pack<K>(s[2 * kk][2], s[2 * kk][3]),
                               pack<K>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack<K>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < Dv / 16; ++np) {
          uint32_t b[4];
          detail::ldmatrix_x4_trans(vs + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kLdV + np * 16 + (lane / 16) * 8,
                                    b);
          mma<K>(o[2 * np], a, b[0], b[1]);
          mma<K>(o[2 * np + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next copy overwrites it
  }
  if (split.tiles > 0) {
    const float sum_a = quad_sum(l_a), sum_b = quad_sum(l_b);
    const int64_t stride = static_cast<int64_t>(Dv) + 2;
    float* part = split.partials + static_cast<int64_t>(blockIdx.z) * T * heads * stride;
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) {
      if (ta < T)
        *reinterpret_cast<float2*>(part + (ta * heads + h) * stride + 8 * n + 2 * c) = make_float2(o[n][0], o[n][1]);
      if (tb < T)
        *reinterpret_cast<float2*>(part + (tb * heads + h) * stride + 8 * n + 2 * c) = make_float2(o[n][2], o[n][3]);
    }
    if (c == 0) {
      if (ta < T) *reinterpret_cast<float2*>(part + (ta * heads + h) * stride + Dv) = make_float2(m_a, sum_a);
      if (tb < T) *reinterpret_cast<float2*>(part + (tb * heads + h) * stride + Dv) = make_float2(m_b, sum_b);
    }
    return;
  }
  const float inv_a = 1.f / quad_sum(l_a), inv_b = 1.f / quad_sum(l_b);
#pragma unroll
  for (int n = 0; n < Dv / 8; ++n) {
    if (ta < T)
      *reinterpret_cast<float2*>(out + (ta * heads + h) * int64_t{Dv} + 8 * n + 2 * c) =
          make_float2(o[n][0] * inv_a, o[n][1] * inv_a);
    if (tb < T)
      *reinterpret_cast<float2*>(out + (tb * heads + h) * int64_t{Dv} + 8 * n + 2 * c) =
          make_float2(o[n][2] * inv_b, o[n][3] * inv_b);
  }
}

// out[t, h] = Σ_s 2^(m_s − M) o_s / Σ_s 2^(m_s − M) l_s over the splits (M their largest maximum, finite:
// split 0 holds position 0, which every token sees); a block per (token, head), a thread per value.
__global__ void merge_splits_kernel(const float* partials, int64_t splits, int64_t rows, int dv, float* out) {
  const int64_t row = blockIdx.x;
  const int64_t stride = dv + 2;
  float m = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) m = fmaxf(m, partials[(s * rows + row) * stride + dv]);
  float l = 0.f, acc = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    const float* part = partials + (s * rows + row) * stride;
    const float w = exp2f(part[dv] - m);  // 0 for a split that saw none of the token's positions
    l += w * part[dv + 1];
    if (static_cast<int>(threadIdx.x) < dv) acc += w * part[threadIdx.x];
  }
  if (static_cast<int>(threadIdx.x) < dv) out[row * dv + threadIdx.x] = acc / l;
}

// MLA's context, decompressed: latent[s] = the cache row's kv_lora values as floats (zeros past the
// sequence), for kv_b's product.
template <KvType K>
__global__ void gather_latent_kernel(PagedKv kv, DeviceBatch batch, int kv_lora, float* latent) {
  const int64_t s = blockIdx.x;
  const int64_t last = batch.tokens - 1, n = batch.positions[last] + 1;
  float* row = latent + s * kv_lora;
  if (s >= n) {
    for (int i = threadIdx.x; i < kv_lora; i += blockDim.x) row[i] = 0.f;
    return;
  }
  const int32_t* table = batch.block_tables + last * batch.table_stride;
  const uint8_t* cached = static_cast<const uint8_t*>(kv.layer_base) +
                          static_cast<int64_t>(table[s / kv.block_tokens]) * kv.block_stride +
                          (s % kv.block_tokens) * kv.row_bytes;
  for (int i = threadIdx.x; i < kv_lora; i += blockDim.x) row[i] = detail::kv_value<K>(cached, i, kv_lora);
}

// K[s][h] = [kv_b's nope rows · latent | the cached rope key], V[s][h] = kv_b's value rows · latent, in
// the cache's 16-bit type (f16 for fp8/int8, whose rope key is stored in f16): a block per position.
template <KvType Stored, int kNope, int kRope, int kV>
__global__ void build_heads_kernel(PagedKv kv, DeviceBatch batch, const float* expanded, int heads, int kv_lora,
                                   uint16_t* k_rows, uint16_t* v_rows) {
  constexpr KvType K = detail::kv_tile_type(Stored);
  const int64_t rope_offset = detail::kv_quantised(Stored) ? detail::quantised_row_bytes(kv_lora) : 2 * kv_lora;
  const int64_t s = blockIdx.x;
  const int64_t last = batch.tokens - 1, n = batch.positions[last] + 1;
  const uint16_t* rope = nullptr;
  if (s < n) {
    const int32_t* table = batch.block_tables + last * batch.table_stride;
    rope = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(kv.layer_base) +
                                             static_cast<int64_t>(table[s / kv.block_tokens]) * kv.block_stride +
                                             (s % kv.block_tokens) * kv.row_bytes + rope_offset);
  }
  auto to16 = [](float f) -> uint16_t {
    if constexpr (K == KvType::f16) return __half_as_ushort(__float2half_rn(f));
    else return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  };
  const float* e = expanded + s * heads * (kNope + kV);
  for (int i = threadIdx.x; i < heads * (kNope + kRope); i += blockDim.x) {
    const int h = i / (kNope + kRope), c = i % (kNope + kRope);
    k_rows[(s * heads) * (kNope + kRope) + i] =
        c < kNope ? to16(e[h * (kNope + kV) + c]) : (rope != nullptr ? rope[c - kNope] : uint16_t{0});
  }
  for (int i = threadIdx.x; i < heads * kV; i += blockDim.x) {
    const int h = i / kV, c = i % kV;
    v_rows[(s * heads) * kV + i] = to16(e[h * (kNope + kV) + kNope + c]);
  }
}

// How many splits of the cached positions the batch's grid takes (1: none), and the key tiles of each.
struct SplitPlan {
  int64_t splits = 1, tiles = 0;
};
SplitPlan split_plan(const DeviceBatch& b, int64_t heads) {
  const int64_t blocks = (b.tokens + kQueryTile - 1) / kQueryTile * heads;
  if (blocks <= 0) return {};  // an empty batch (or no heads) launches nothing
  const int64_t key_tiles = (b.max_context + kKeyTile - 1) / kKeyTile;
  // Rounded down: a grid just past one wave of resident blocks waits out a second, partial one (3
  // splits of 128 blocks, 384 for 264 places, took 424 µs where 2 take about half the unsplit 469).
  const int64_t wanted = std::min(kTargetBlocks / blocks, key_tiles / kMinSplitTiles);
  if (wanted <= 1) return {};
  const int64_t tiles = (key_tiles + wanted - 1) / wanted;
  return {(key_tiles + tiles - 1) / tiles, tiles};
}

template <KvType Stored, bool kPaged, int Dqk, int Dv>
void launch_flash(Stream& stream, const KvRows& rows, const DeviceBatch& batch, const float* q, int64_t heads,
                  int64_t group, float softmax_scale, const SplitPlan& plan, float* scratch, float* out) {
  const dim3 grid(detail::grid_dim((batch.tokens + kQueryTile - 1) / kQueryTile, "flash attention"),
                  static_cast<unsigned>(heads), static_cast<unsigned>(plan.splits));
  auto* kernel = flash_kernel<Stored, kPaged, Dqk, Dv>;
  constexpr size_t shared = kernel_shared_bytes<Dqk, Dv>();
  detail::opt_in_shared_memory(kernel, shared, "flash attention (shared memory opt-in)");
  const Splits split{plan.splits > 1 ? plan.tiles : 0, plan.splits > 1 ? scratch : nullptr};
  kernel<<<grid, kThreads, shared, detail::native(stream)>>>(rows, batch, q, static_cast<int>(heads),
                                                            static_cast<int>(group),
                                                            softmax_scale * static_cast<float>(M_LOG2E), split, out);
  detail::check_launch("flash attention");
  if (plan.splits == 1) return;
  const int64_t rows_out = batch.tokens * heads;
  merge_splits_kernel<<<detail::grid_dim(rows_out, "flash attention (merge)"), Dv, 0, detail::native(stream)>>>(
      scratch, plan.splits, rows_out, Dv, out);
  detail::check_launch("flash attention (merge)");
}

// cp.async copies 16-byte pieces of f16/bf16 rows; fp8/int8 rows are read bytewise.
bool aligned16(const PagedKv& kv) {
  return detail::kv_quantised(kv.type) ||
         (reinterpret_cast<uintptr_t>(kv.layer_base) % 16 == 0 && kv.row_bytes % 16 == 0 && kv.block_stride % 16 == 0);
}
bool tile_kind(KvType t) { return t == KvType::f16 || t == KvType::bf16 || detail::kv_quantised(t); }

// Calls fn with the cache kind as a constant (f16, bf16, fp8 or int8; the callers checked).
template <typename Fn>
void by_tile_kind(KvType type, Fn&& fn) {
  switch (type) {
    case KvType::fp8: fn(std::integral_constant<KvType, KvType::fp8>{}); break;
    case KvType::int8: fn(std::integral_constant<KvType, KvType::int8>{}); break;
    case KvType::bf16: fn(std::integral_constant<KvType, KvType::bf16>{}); break;
    default: fn(std::integral_constant<KvType, KvType::f16>{}); break;
  }
}

constexpr int kMlaNope = 128, kMlaRope = 64, kMlaV = 128;  // DeepSeek-V2, V2-Lite, V3 and R1

}  // namespace

bool flash_attention_supported(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               const PagedKv& kv) {
  return b.one_sequence && b.tokens >= kMinTokens && tile_kind(kv.type) && (head_dim == 64 || head_dim == 128) &&
         kv_heads > 0 && heads % kv_heads == 0 && heads <= 65535 && aligned16(kv) &&
         !(detail::kv_quantised(kv.type) && kv.rope_values != 0);
}

int64_t flash_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t head_dim) {
  const SplitPlan plan = split_plan(b, heads);
  return plan.splits == 1 ? 0 : plan.splits * b.tokens * heads * (head_dim + 2);
}

void flash_gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scratch, float* out) {
  if (batch.tokens <= 0) return;
  if (!flash_attention_supported(batch, heads, kv_heads, head_dim, kv))
    throw Error(ErrorKind::internal,
                text("cuda flash_gqa_attention: unsupported batch or shape (", batch.tokens, " tokens, ", heads, "/",
                     kv_heads, " heads of ", head_dim, ")"));
  KvRows rows;
  rows.paged = kv;
  rows.kv_heads = static_cast<int>(kv_heads);
  const int64_t group = heads / kv_heads;
  const SplitPlan plan = scratch != nullptr ? split_plan(batch, heads) : SplitPlan{};
  by_tile_kind(kv.type, [&](auto k) {
    constexpr KvType kType = decltype(k)::value;
    if (head_dim == 64)
      launch_flash<kType, true, 64, 64>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
    else
      launch_flash<kType, true, 128, 128>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
  });
}

bool flash_mla_supported(const DeviceBatch& b, int64_t heads, int64_t nope, int64_t rope, int64_t v, int64_t kv_lora,
                         const PagedKv& kv) {
  const bool quantised = detail::kv_quantised(kv.type);
  const int64_t stored_row_bytes = quantised ? detail::quantised_row_bytes(kv_lora) + 2 * rope : (kv_lora + rope) * 2;
  return b.one_sequence && b.tokens >= kMinTokens && tile_kind(kv.type) && nope == kMlaNope && rope == kMlaRope &&
         v == kMlaV && kv_lora > 0 && kv_lora % 2 == 0 && kv.row_bytes >= stored_row_bytes &&
         (!quantised || kv.rope_values == rope) && heads > 0 && heads <= 65535 && b.max_context > 0;
}

size_t flash_mla_scratch_bytes(const DeviceBatch& b, int64_t heads, int64_t kv_lora) {
  const auto n = static_cast<size_t>(b.max_context), h = static_cast<size_t>(heads);
  const size_t floats = n * static_cast<size_t>(kv_lora) + n * h * (kMlaNope + kMlaV);
  const size_t halves = n * h * (kMlaNope + kMlaRope + kMlaV);
  return floats * 4 + halves * 2 + 64;
}

void flash_mla_prefill(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const DeviceWeight& kv_b,
                       TensorCoreMath math, const float* q, int64_t heads, int64_t nope, int64_t rope, int64_t v,
                       int64_t kv_lora, float softmax_scale, void* scratch, float* out) {
  if (batch.tokens <= 0) return;
  if (!flash_mla_supported(batch, heads, nope, rope, v, kv_lora, kv) ||
      kv_b.out_features != heads * (nope + v) || kv_b.in_features != kv_lora)
    throw Error(ErrorKind::internal,
                text("cuda flash_mla_prefill: unsupported batch or shape (", batch.tokens, " tokens, ", heads,
                     " heads, nope ", nope, " rope ", rope, " v ", v, " latent ", kv_lora, ")"));
  const int64_t n = batch.max_context;
  auto* latent = static_cast<float*>(scratch);
  float* expanded = latent + n * kv_lora;
  auto* k_rows = reinterpret_cast<uint16_t*>(expanded + n * heads * (nope + v));
  uint16_t* v_rows = k_rows + n * heads * (nope + rope);
  const unsigned blocks = detail::grid_dim(n, "flash_mla_prefill (positions)");
  by_tile_kind(kv.type, [&](auto k) {
    constexpr KvType kType = decltype(k)::value;
    gather_latent_kernel<kType><<<blocks, 128, 0, detail::native(stream)>>>(kv, batch, static_cast<int>(kv_lora), latent);
    detail::check_launch("flash_mla_prefill (latent)");
    linear(stream, kv_b, latent, n, expanded, math);
    build_heads_kernel<kType, kMlaNope, kMlaRope, kMlaV><<<blocks, 256, 0, detail::native(stream)>>>(
        kv, batch, expanded, static_cast<int>(heads), static_cast<int>(kv_lora), k_rows, v_rows);
    detail::check_launch("flash_mla_prefill (heads)");
    KvRows rows;
    rows.k = reinterpret_cast<const uint8_t*>(k_rows);
    rows.v = reinterpret_cast<const uint8_t*>(v_rows);
    rows.kv_heads = static_cast<int>(heads);
    launch_flash<detail::kv_tile_type(kType), false, kMlaNope + kMlaRope, kMlaV>(stream, rows, batch, q, heads, 1,
                                                                               softmax_scale, SplitPlan{}, nullptr, out);
  });
}

}  // namespace tandem::cuda
