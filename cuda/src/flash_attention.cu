// Causal GQA attention of one sequence's prompt chunk on the tensor cores (flash attention): a block
// of four warps takes 64 query tokens of one head, each warp 16 (GQA prompts with
// TANDEM_CUDA_FLASH_TWO_TILES=1: 128 and 32). The block walks the cached positions 64 at a time up
// to its last token's; each tile's K and V rows are copied straight from the paged cache into shared
// memory as stored (f16 or bf16, cp.async, the next tile's copy in flight while this one is used).
// Scores S = Q·Kᵀ come from mma.sync with Q as the cache's type (in registers for 16 rows a warp, in
// shared memory for 32); the online softmax (running max and sum per row, float32) rescales the
// output accumulators; the probabilities go back into the tensor cores, in the cache's type, as the
// A operand of O += P·V without passing through shared memory. The last query tiles (the most
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
#include <cstdlib>
#include <string_view>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "mma.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

// A warp takes 16 · kM query tokens (kM row tiles of the mma); a block of four warps 64 · kM. Two row
// tiles a warp use each K and V fragment loaded from shared memory twice (half the loads per product)
// and give each warp twice the independent products; their Q tile is staged in shared memory, where one
// row tile's Q fits in registers.
template <int kM>
constexpr int query_tile() {
  return 64 * kM;
}
constexpr int kKeyTile = 64;  // cached positions per step
constexpr int kThreads = 128;
constexpr int64_t kMinTokens = 64;  // fewer query tokens: the split-K kernel keeps more SMs busy
// A chunk of few query tiles after a long cached prefix (a prefix hit's suffix pass: 4 tiles × 32 heads
// over 8k positions) would leave most SMs idle with one block a tile and head: its cached positions are
// split among blocks while the grid stays within kTargetBlocks (two blocks an SM of an H100/H200 are
// resident: up to 255 registers a thread), each split at least kMinSplitTiles key tiles, and a second
// kernel merges the splits.
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

// Two stages of K and V tiles, and with two row tiles a warp the block's Q tile.
template <int Dqk, int Dv, int kM>
constexpr size_t kernel_shared_bytes() {
  return (size_t{2} * kKeyTile * (row_stride<Dqk>() + row_stride<Dv>()) +
          (kM > 1 ? size_t{query_tile<kM>()} * row_stride<Dqk>() : 0)) *
         2;
}

// Where a split block leaves its rows (tiles > 0): per (split, token, head) the unnormalised
// output [Dv], then the running maximum (log2 units) and the sum; merge_splits_kernel combines them.
struct Splits {
  int64_t tiles = 0;  // key tiles a split covers; 0: one block covers all, out is written directly
  float* partials = nullptr;
};

template <KvType Stored, bool kPaged, int Dqk, int Dv, int kM>
__global__ void __launch_bounds__(kThreads, 2)
    flash_kernel(KvRows rows, DeviceBatch batch, const float* q, int heads, int group, float scale_log2, Splits split,
                 float* out) {
  constexpr KvType K = detail::kv_tile_type(Stored);  // the tiles' 16-bit type
  constexpr int kLdK = row_stride<Dqk>(), kLdV = row_stride<Dv>(), kTile = query_tile<kM>();
  extern __shared__ uint4 shared_words[];
  auto* k_stage = reinterpret_cast<uint16_t*>(shared_words);  // [2][kKeyTile][kLdK]
  uint16_t* v_stage = k_stage + 2 * kKeyTile * kLdK;             // [2][kKeyTile][kLdV]
  uint16_t* q_tile = v_stage + 2 * kKeyTile * kLdV;              // [kTile][kLdK] (kM > 1)
  const int64_t T = batch.tokens;
  const int64_t t0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kTile;
  const int h = static_cast<int>(blockIdx.y), g = h / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;
  const int64_t last = t0 + kTile - 1 < T ? t0 + kTile - 1 : T - 1;
  const int64_t n_end = batch.positions[last] + 1;  // one sequence, increasing positions: the tile's widest
  const RowAddress<kPaged, Dqk, Dv> address{rows, batch.block_tables + last * batch.table_stride};

  // This thread's rows: 2m (row r of row tile m) and 2m + 1 (row r + 8); rows past the batch attend to
  // position 0 only (finite sums) and are not written.
  const int64_t warp_first = t0 + warp * 16 * kM;
  int row_token[2 * kM], row_position[2 * kM];  // a prompt chunk's tokens and positions fit 31 bits
#pragma unroll
  for (int i = 0; i < 2 * kM; ++i) {
    row_token[i] = static_cast<int>(warp_first) + 16 * (i / 2) + r + 8 * (i % 2);
    row_position[i] = row_token[i] < T ? static_cast<int>(batch.positions[row_token[i]]) : 0;
  }
  const int64_t warp_last = warp_first + 16 * kM - 1 < T ? warp_first + 16 * kM - 1 : T - 1;
  const int64_t warp_end = warp_first < T ? batch.positions[warp_last] + 1 : 1;

  // Q in the tiles' type: one row tile's fragments in registers, two row tiles' in shared memory
  // (read back by ldmatrix for each product; __syncthreads in the loop publishes them).
  uint32_t qf[kM == 1 ? Dqk / 16 : 1][4];
  if constexpr (kM == 1) {
    const float* qa = q + ((row_token[0] < T ? row_token[0] : T - 1) * int64_t{heads} + h) * Dqk + 2 * c;
    const float* qb = q + ((row_token[1] < T ? row_token[1] : T - 1) * int64_t{heads} + h) * Dqk + 2 * c;
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
  } else {
    constexpr int kQuads = Dqk / 4;  // float4 pieces of a row
    for (int i = threadIdx.x; i < kTile * kQuads; i += kThreads) {
      const int row = i / kQuads, quad = i % kQuads;
      const int64_t t = t0 + row < T ? t0 + row : T - 1;
      const float4 v = *reinterpret_cast<const float4*>(q + (t * heads + h) * int64_t{Dqk} + 4 * quad);
      *reinterpret_cast<uint2*>(q_tile + row * kLdK + 4 * quad) = make_uint2(pack<K>(v.x, v.y), pack<K>(v.z, v.w));
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

  float o[kM][Dv / 8][4];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.f;
  // Per row of this thread, in log2 units: the running maximum and (this thread's columns') sum.
  float row_max[2 * kM], row_sum[2 * kM];
#pragma unroll
  for (int i = 0; i < 2 * kM; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.f;
  }
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
      float s[kM][kKeyTile / 8][4];
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kKeyTile / 8; ++j) s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < Dqk / 16; ++kk) {
        uint32_t a[kM][4];
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          if constexpr (kM == 1) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[m][e] = qf[kk][e];
          } else {
            detail::ldmatrix_x4(q_tile + (warp * 16 * kM + 16 * m + lane % 16) * kLdK + kk * 16 + (lane / 16) * 8,
                                a[m]);
          }
        }
#pragma unroll
        for (int p = 0; p < kKeyTile / 16; ++p) {
          uint32_t b[4];
          detail::ldmatrix_x4(ks + (p * 16 + lane % 8 + (lane / 16) * 8) * kLdK + kk * 16 + ((lane / 8) % 2) * 8, b);
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            mma<K>(s[m][2 * p], a[m], b[0], b[1]);
            mma<K>(s[m][2 * p + 1], a[m], b[2], b[3]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        const int pa = row_position[2 * m], pb = row_position[2 * m + 1], first_key = static_cast<int>(s0);
        const bool masked = first_key + kKeyTile - 1 > pa || first_key + kKeyTile - 1 > pb;
        float mx_a = row_max[2 * m], mx_b = row_max[2 * m + 1];
#pragma unroll
        for (int j = 0; j < kKeyTile / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v = s[m][j][e] * scale_log2;
            if (masked && first_key + 8 * j + 2 * c + (e % 2) > (e < 2 ? pa : pb)) v = -INFINITY;
            s[m][j][e] = v;
            if (e < 2) mx_a = fmaxf(mx_a, v);
            else mx_b = fmaxf(mx_b, v);
          }
        // Finite unsplit (every row sees position 0 in the first tile); a split's row may see no position
        // of its first tiles, and then keeps a maximum of −∞ with zero sums (exponents taken from 0).
        mx_a = quad_max(mx_a);
        mx_b = quad_max(mx_b);
        const float ua = mx_a == -INFINITY ? 0.f : mx_a, ub = mx_b == -INFINITY ? 0.f : mx_b;
        const float ca = exp2f(row_max[2 * m] - ua), cb = exp2f(row_max[2 * m + 1] - ub);  // 0 on the first tile
        row_max[2 * m] = mx_a;
        row_max[2 * m + 1] = mx_b;
        float la = row_sum[2 * m] * ca, lb = row_sum[2 * m + 1] * cb;
#pragma unroll
        for (int n = 0; n < Dv / 8; ++n) {
          o[m][n][0] *= ca;
          o[m][n][1] *= ca;
          o[m][n][2] *= cb;
          o[m][n][3] *= cb;
        }
#pragma unroll
        for (int j = 0; j < kKeyTile / 8; ++j) {
          s[m][j][0] = exp2f(s[m][j][0] - ua);
          s[m][j][1] = exp2f(s[m][j][1] - ua);
          s[m][j][2] = exp2f(s[m][j][2] - ub);
          s[m][j][3] = exp2f(s[m][j][3] - ub);
          la += s[m][j][0] + s[m][j][1];
          lb += s[m][j][2] + s[m][j][3];
        }
        row_sum[2 * m] = la;
        row_sum[2 * m + 1] = lb;
      }
#pragma unroll
      for (int kk = 0; kk < kKeyTile / 16; ++kk) {
        // S's accumulators for columns 16kk … 16kk + 15 are, as written, P's A fragment for that k-step.
        uint32_t a[kM][4];
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          a[m][0] = pack<K>(s[m][2 * kk][0], s[m][2 * kk][1]);
          a[m][1] = pack<K>(s[m][2 * kk][2], s[m][2 * kk][3]);
          a[m][2] = pack<K>(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
          a[m][3] = pack<K>(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < Dv / 16; ++np) {
          uint32_t b[4];
          detail::ldmatrix_x4_trans(vs + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kLdV + np * 16 + (lane / 16) * 8,
                                    b);
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            mma<K>(o[m][2 * np], a[m], b[0], b[1]);
            mma<K>(o[m][2 * np + 1], a[m], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next copy overwrites it
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    const int64_t ta = row_token[2 * m], tb = row_token[2 * m + 1];  // widened for the offsets below
    if (split.tiles > 0) {
      const float sum_a = quad_sum(row_sum[2 * m]), sum_b = quad_sum(row_sum[2 * m + 1]);
      const int64_t stride = static_cast<int64_t>(Dv) + 2;
      float* part = split.partials + static_cast<int64_t>(blockIdx.z) * T * heads * stride;
#pragma unroll
      for (int n = 0; n < Dv / 8; ++n) {
        if (ta < T)
          *reinterpret_cast<float2*>(part + (ta * heads + h) * stride + 8 * n + 2 * c) =
              make_float2(o[m][n][0], o[m][n][1]);
        if (tb < T)
          *reinterpret_cast<float2*>(part + (tb * heads + h) * stride + 8 * n + 2 * c) =
              make_float2(o[m][n][2], o[m][n][3]);
      }
      if (c == 0) {
        if (ta < T)
          *reinterpret_cast<float2*>(part + (ta * heads + h) * stride + Dv) = make_float2(row_max[2 * m], sum_a);
        if (tb < T)
          *reinterpret_cast<float2*>(part + (tb * heads + h) * stride + Dv) = make_float2(row_max[2 * m + 1], sum_b);
      }
      continue;
    }
    const float inv_a = 1.f / quad_sum(row_sum[2 * m]), inv_b = 1.f / quad_sum(row_sum[2 * m + 1]);
#pragma unroll
    for (int n = 0; n < Dv / 8; ++n) {
      if (ta < T)
        *reinterpret_cast<float2*>(out + (ta * heads + h) * int64_t{Dv} + 8 * n + 2 * c) =
            make_float2(o[m][n][0] * inv_a, o[m][n][1] * inv_a);
      if (tb < T)
        *reinterpret_cast<float2*>(out + (tb * heads + h) * int64_t{Dv} + 8 * n + 2 * c) =
            make_float2(o[m][n][2] * inv_b, o[m][n][3] * inv_b);
    }
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
SplitPlan split_plan(const DeviceBatch& b, int64_t heads, int64_t query_tokens) {
  const int64_t blocks = (b.tokens + query_tokens - 1) / query_tokens * heads;
  if (blocks <= 0) return {};  // an empty batch (or no heads) launches nothing
  const int64_t key_tiles = (b.max_context + kKeyTile - 1) / kKeyTile;
  // Rounded down: a grid just past one wave of resident blocks waits out a second, partial one (3
  // splits of 128 blocks, 384 for 264 places, took 424 µs where 2 take about half the unsplit 469).
  const int64_t wanted = std::min(kTargetBlocks / blocks, key_tiles / kMinSplitTiles);
  if (wanted <= 1) return {};
  const int64_t tiles = (key_tiles + wanted - 1) / wanted;
  return {(key_tiles + tiles - 1) / tiles, tiles};
}

// Row tiles a warp for GQA prompts: 1 unless TANDEM_CUDA_FLASH_TWO_TILES=1 (not yet measured on a GPU:
// opt-in until an A/B run decides the default).
int gqa_row_tiles() {
  const char* v = std::getenv("TANDEM_CUDA_FLASH_TWO_TILES");
  return v != nullptr && std::string_view(v) == "1" ? 2 : 1;
}

template <KvType Stored, bool kPaged, int Dqk, int Dv, int kM>
void launch_flash(Stream& stream, const KvRows& rows, const DeviceBatch& batch, const float* q, int64_t heads,
                  int64_t group, float softmax_scale, const SplitPlan& plan, float* scratch, float* out) {
  constexpr int64_t kTile = query_tile<kM>();
  const dim3 grid(detail::grid_dim((batch.tokens + kTile - 1) / kTile, "flash attention"),
                  static_cast<unsigned>(heads), static_cast<unsigned>(plan.splits));
  auto* kernel = flash_kernel<Stored, kPaged, Dqk, Dv, kM>;
  constexpr size_t shared = kernel_shared_bytes<Dqk, Dv, kM>();
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
  const SplitPlan plan = split_plan(b, heads, gqa_row_tiles() * query_tile<1>());
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
  const int row_tiles = gqa_row_tiles();
  const SplitPlan plan = scratch != nullptr ? split_plan(batch, heads, row_tiles * query_tile<1>()) : SplitPlan{};
  by_tile_kind(kv.type, [&](auto k) {
    constexpr KvType kType = decltype(k)::value;
    if (row_tiles == 1) {
      if (head_dim == 64)
        launch_flash<kType, true, 64, 64, 1>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
      else
        launch_flash<kType, true, 128, 128, 1>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
    } else if (head_dim == 64) {
      launch_flash<kType, true, 64, 64, 2>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
    } else {
      launch_flash<kType, true, 128, 128, 2>(stream, rows, batch, q, heads, group, softmax_scale, plan, scratch, out);
    }
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
    launch_flash<detail::kv_tile_type(kType), false, kMlaNope + kMlaRope, kMlaV, 1>(stream, rows, batch, q, heads, 1,
                                                                               softmax_scale, SplitPlan{}, nullptr, out);
  });
}

}  // namespace tandem::cuda
