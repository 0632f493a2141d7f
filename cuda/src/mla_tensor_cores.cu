// Absorbed MLA decode attention on the tensor cores (issue 16, FlashMLA-style): every query head
// attends over the same latent row per cached position (kv_lora latent values, then the rope key),
// so the scores of a group of heads are one GEMM, S = Q·Kᵀ with M = the heads, and the output
// O = P·V with V = the rows' latent part — MQA-shaped, run on mma.sync m16n8k16 with f32 accumulators.
//
// A block of 8 warps takes (group of 16·MT heads, split of the context, token); MT = 1, 2 or 4 head
// tiles of 16 (DeepSeek-V3's 128 heads: two blocks of 64 per split). Shared memory holds
//   Q   [16·MT heads][ld]       the group's queries (latent | rope), converted once to the MMA's type
//   K   [2][64 positions][ld]   two stages of cached rows, copied as stored (cp.async, 16 bytes a
//                               piece): tile i + 1 in flight while tile i is used
//   P   [16·MT heads][64]       the tile's probabilities in the MMA's type
// (ld: the row width rounded up to 64 values; every row is XOR-swizzled by 16-byte piece — piece
// p of row r sits at p ^ (r mod 8) — so ldmatrix's eight row addresses hit distinct banks), plus a
// few floats for the cross-warp row maxima and sums. DeepSeek's 512 + 64 at 64 heads: 230,912 bytes,
// one block an SM.
//
// Per 64-position tile:
//   S  warp w scores head tile w mod MT against positions [8·MT·⌊w / MT⌋, +8·MT) of the tile over the
//      whole row (latent and rope: width / 16 k-steps; A from Q by ldmatrix, B from K by ldmatrix);
//   softmax per head row: the warps of a head tile exchange their row maxima through shared memory,
//      then each takes m_new = max(m, tile max), e = exp(s − m_new) (0 past the split's end),
//      correction exp(m − m_new) (0 on the first tile), l = l · correction + Σ e — the CUDA-core
//      kernel's definitions, in natural units, so merge_kernel combines either kernel's partials —
//      and writes e, rounded to the MMA's type, into P;
//   O  warp w owns columns [w · kv_lora / 8, +kv_lora / 8) of the output for all the group's heads
//      (MT · kv_lora / 16 f32 accumulators a thread: 128 for 64 heads of 512), rescales them by the
//      heads' corrections and adds P·V (A from P, B from the K tile's latent part by ldmatrix.trans).
// The last tile's rows past the split's end repeat its last row (a block the table holds); their
// scores are masked. Heads past `heads` in the last group have zero queries and are not written.
//
// Splits: as the CUDA-core kernel (split_positions with this kernel's 64-position quantum), with
// enough splits that head groups × splits × tokens ≈ 132 blocks (one wave: one block an SM). The
// grid's x is the head group, so the blocks that read the same rows run side by side (the second
// read of a row is an L2 hit). Partials: per (token, head, split) max, sum, kv_lora unnormalised
// values — merge_kernel's layout; one split writes out = acc / l directly.
//
// Precision: K and V are used exactly as cached (f16 or bf16). Q is rounded once to the cache's
// 16-bit type (f16: 2⁻¹¹ relative, ~5e-4; bf16: 2⁻⁸, ~4e-3) and each probability e is rounded to it
// before P·V (the sum l is taken over the unrounded e); accumulation, the maxima and the softmax are
// float32. Against the float64 definition a host emulation of these roundings (unit-normal queries and
// rows, scale 1/√192) put the output within 4e-4 (f16) and 3e-3 (bf16) of its largest magnitude; the
// CUDA-core kernel (float32 throughout) stays the reference and the fallback.
// fp8/int8 caches, other latent widths and TANDEM_CUDA_MLA_TC=0 take the CUDA-core kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kv_rows.cuh"
#include "launch.cuh"
#include "mla_tensor_cores.cuh"
#include "mma.cuh"

namespace tandem::cuda::detail {
namespace {

constexpr int kTile = static_cast<int>(kMlaTcTile);  // positions per step
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int64_t kTargetBlocks = 132;  // one block an SM of an H100/H200 (shared memory): one wave

// Two 8×8 matrices of 16-bit values; lanes 0–7 give matrix 0's row addresses, 8–15 matrix 1's (the
// other lanes' addresses are not used).
__device__ __forceinline__ void ldmatrix_x2(const void* p, uint32_t (&r)[2]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(p)));
}

// Offset, in 16-bit values, of value `col` of row `row` in a swizzled tile of rows `ld` values apart
// (ld a multiple of 64): the row's 16-byte piece col / 8 is stored at piece (col / 8) ^ (row mod 8).
__device__ __forceinline__ int swizzled(int row, int col, int ld) {
  return row * ld + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

__host__ __device__ constexpr int row_stride(int width) { return (width + 63) / 64 * 64; }

// Dynamic shared memory of a block of 16·mt heads over rows of `width` values (layout: the kernel's).
constexpr size_t shared_bytes(int mt, int width) {
  const int heads = 16 * mt, ld = row_stride(width), slices = kWarps / mt;
  return size_t{2} * static_cast<size_t>(heads * ld + 2 * kTile * ld + heads * kTile) +
         size_t{4} * static_cast<size_t>(2 * slices * heads + 2 * heads);
}

int64_t head_tiles(int64_t heads) { return heads <= 16 ? 1 : heads <= 32 ? 2 : 4; }
int64_t head_groups(int64_t heads) { return (heads + 16 * head_tiles(heads) - 1) / (16 * head_tiles(heads)); }

// Block (head group, split, token). MT head tiles of 16; CW = kv_lora / 8 output columns a warp.
template <KvType K, int MT, int CW>
__global__ void __launch_bounds__(kThreads, 1)
    mla_tc_kernel(PagedKv kv, DeviceBatch batch, const float* q_latent, const float* q_rope, int heads, int kv_lora,
                  int rope_dim, float softmax_scale, int64_t target_splits, int64_t split_stride, float* partials,
                  float* out) {
  constexpr int kHeads = 16 * MT;
  constexpr int kSlices = kWarps / MT;        // S: warps per head tile, each a slice of the tile's positions
  constexpr int kPositions = kTile / kSlices;  // positions a warp scores: 8·MT
  constexpr int kScoreTiles = kPositions / 8;  // its 8-wide accumulator tiles (MT)
  constexpr int kOutTiles = CW / 8;            // O: a warp's 8-wide accumulator tiles per head tile
  static_assert(kScoreTiles == 1 || kScoreTiles % 2 == 0, "scores: one x2 or pairs of x4 ldmatrix");
  static_assert(CW % 16 == 0, "values: x4.trans ldmatrix of 16 columns");
  extern __shared__ uint4 shared_words[];
  wait_for_prior_grids();
  const int width = kv_lora + rope_dim, ld = row_stride(width);
  uint16_t* qs = reinterpret_cast<uint16_t*>(shared_words);  // [kHeads][ld]
  uint16_t* ks = qs + kHeads * ld;                             // [2][kTile][ld]
  uint16_t* ps = ks + 2 * kTile * ld;                          // [kHeads][kTile]
  float* red_max = reinterpret_cast<float*>(ps + kHeads * kTile);  // [kSlices][kHeads] a tile's row maxima
  float* red_sum = red_max + kSlices * kHeads;                      // [kSlices][kHeads] the final row sums
  float* correction = red_sum + kSlices * kHeads;                   // [kHeads] a tile's exp(m − m_new)
  float* final_max = correction + kHeads;                           // [kHeads]

  const int64_t t = blockIdx.z, split = blockIdx.y;
  const int h0 = static_cast<int>(blockIdx.x) * kHeads;
  const int64_t n = batch.positions[t] + 1;
  const int64_t len = split_positions(n, target_splits, kTile);
  const int64_t splits = (n + len - 1) / len;
  if (split >= splits) return;
  const int64_t begin = split * len, end = begin + len < n ? begin + len : n;
  const int tiles = static_cast<int>((end - begin + kTile - 1) / kTile);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int r = lane / 4, c = lane % 4;
  const int32_t* table = batch.block_tables + t * batch.table_stride;
  const auto* base = static_cast<const uint8_t*>(kv.layer_base);
  const BlockSlot block_slot(kv.block_tokens);
  const int pieces = width / 8;  // 16-byte pieces of a row

  // Tile [s0, s0 + kTile) into stage `stage`: warp w copies rows w, w + 8, …, its lanes the pieces.
  auto copy_tile = [&](int64_t s0, int stage) {
    uint16_t* tile = ks + stage * kTile * ld;
    for (int row = warp; row < kTile; row += kWarps) {
      const int64_t s = s0 + row < end ? s0 + row : end - 1;
      int b, slot;
      block_slot(s, b, slot);
      const uint8_t* src = base + static_cast<int64_t>(table[b]) * kv.block_stride + static_cast<int64_t>(slot) * kv.row_bytes;
      for (int piece = lane; piece < pieces; piece += 32)
        copy_async16(tile + row * ld + ((piece ^ (row & 7)) << 3), src + piece * 16);
    }
    commit_copies();
  };
  copy_tile(begin, 0);

  // The group's queries, rounded once to the MMA's type (zero rows past the last head): four values an
  // item (kv_lora and rope_dim are multiples of 4, so an item is all latent or all rope), a batch of
  // kQueryBatch items' loads in flight per thread before their stores (64 heads of 576 floats: 36
  // items a thread; one at a time each would wait out a memory latency).
  {
    constexpr int kQueryBatch = 12;
    const int quads = width / 4, items = kHeads * quads;
    const bool vector = reinterpret_cast<uintptr_t>(q_latent) % 16 == 0 &&
                        (rope_dim == 0 || reinterpret_cast<uintptr_t>(q_rope) % 16 == 0);
    for (int first = static_cast<int>(threadIdx.x); first < items; first += kThreads * kQueryBatch) {
      float4 v[kQueryBatch];
#pragma unroll
      for (int u = 0; u < kQueryBatch; ++u) {
        const int i = first + u * kThreads;
        v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i >= items) continue;
        const int row = i / quads, col = 4 * (i - row * quads);
        const int h = h0 + row;
        if (h >= heads) continue;
        const float* src = col < kv_lora ? q_latent + ((t * heads + h) * kv_lora + col)
                                         : q_rope + ((t * heads + h) * rope_dim + (col - kv_lora));
        v[u] = vector ? *reinterpret_cast<const float4*>(src) : make_float4(src[0], src[1], src[2], src[3]);
      }
#pragma unroll
      for (int u = 0; u < kQueryBatch; ++u) {
        const int i = first + u * kThreads;
        if (i >= items) continue;
        const int row = i / quads, col = 4 * (i - row * quads);
        *reinterpret_cast<uint2*>(qs + swizzled(row, col, ld)) =
            make_uint2(pack<K>(v[u].x, v[u].y), pack<K>(v[u].z, v[u].w));
      }
    }
  }

  float o[MT][kOutTiles][4];
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int nt = 0; nt < kOutTiles; ++nt) o[j][nt][0] = o[j][nt][1] = o[j][nt][2] = o[j][nt][3] = 0.f;
  // The scoring warp's rows: head tile mt, rows r (a) and r + 8 (b); l: this thread's columns' share.
  const int mt = warp % MT, slice = warp / MT, p0 = slice * kPositions;
  const int row_a = 16 * mt + r, row_b = row_a + 8;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  const int ksteps = width / 16;

  for (int i = 0; i < tiles; ++i) {
    wait_copies<0>();  // tile i (this thread's copies; the barrier: everyone's)
    __syncthreads();   // and every warp is done with tile i − 1: its stage, P and the row maxima are free
    if (i + 1 < tiles) copy_tile(begin + static_cast<int64_t>(i + 1) * kTile, (i + 1) & 1);
    const uint16_t* kt = ks + (i & 1) * kTile * ld;
    const int64_t s0 = begin + static_cast<int64_t>(i) * kTile;
    const int count = static_cast<int>(end - s0 < kTile ? end - s0 : kTile);  // valid positions of the tile

    // S = Q·Kᵀ for head tile mt and positions [p0, p0 + kPositions).
    float s[kScoreTiles][4];
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    if (p0 < count) {
#pragma unroll 2
      for (int kk = 0; kk < ksteps; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(qs + swizzled(16 * mt + (lane & 15), 16 * kk + (lane >> 4) * 8, ld), a);
        if constexpr (kScoreTiles == 1) {
          uint32_t b[2];
          ldmatrix_x2(kt + swizzled(p0 + (lane & 7), 16 * kk + ((lane >> 3) & 1) * 8, ld), b);
          mma<K>(s[0], a, b[0], b[1]);
        } else {
#pragma unroll
          for (int p = 0; p < kScoreTiles / 2; ++p) {
            uint32_t b[4];
            ldmatrix_x4(kt + swizzled(p0 + 16 * p + (lane & 7) + (lane >> 4) * 8, 16 * kk + ((lane >> 3) & 1) * 8, ld),
                        b);
            mma<K>(s[2 * p], a, b[0], b[1]);
            mma<K>(s[2 * p + 1], a, b[2], b[3]);
          }
        }
      }
    }
    // Scaled and masked scores; the tile's row maxima over the head tile's warps.
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = p0 + 8 * j + 2 * c + (e & 1);
        const float v = pos < count ? s[j][e] * softmax_scale : -INFINITY;
        s[j][e] = v;
        if (e < 2) mx_a = fmaxf(mx_a, v);
        else mx_b = fmaxf(mx_b, v);
      }
    mx_a = quad_max(mx_a);
    mx_b = quad_max(mx_b);
    if (c == 0) {
      red_max[slice * kHeads + row_a] = mx_a;
      red_max[slice * kHeads + row_b] = mx_b;
    }
    __syncthreads();
    float tile_a = -INFINITY, tile_b = -INFINITY;  // finite: slice 0 holds the tile's first position
#pragma unroll
    for (int k = 0; k < kSlices; ++k) {
      tile_a = fmaxf(tile_a, red_max[k * kHeads + row_a]);
      tile_b = fmaxf(tile_b, red_max[k * kHeads + row_b]);
    }
    const float new_a = fmaxf(m_a, tile_a), new_b = fmaxf(m_b, tile_b);
    const float corr_a = expf(m_a - new_a), corr_b = expf(m_b - new_b);  // 0 on the first tile (m = −∞)
    m_a = new_a;
    m_b = new_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int j = 0; j < kScoreTiles; ++j) {
      const float e0 = expf(s[j][0] - new_a), e1 = expf(s[j][1] - new_a);  // 0 past the end
      const float e2 = expf(s[j][2] - new_b), e3 = expf(s[j][3] - new_b);
      sum_a += e0 + e1;
      sum_b += e2 + e3;
      const int col = p0 + 8 * j + 2 * c;
      *reinterpret_cast<uint32_t*>(ps + swizzled(row_a, col, kTile)) = pack<K>(e0, e1);
      *reinterpret_cast<uint32_t*>(ps + swizzled(row_b, col, kTile)) = pack<K>(e2, e3);
    }
    l_a = l_a * corr_a + sum_a;
    l_b = l_b * corr_b + sum_b;
    if (slice == 0 && c == 0) {
      correction[row_a] = corr_a;
      correction[row_b] = corr_b;
    }
    __syncthreads();

    // O = O · correction + P·V for every head of the group and this warp's CW columns.
#pragma unroll
    for (int j = 0; j < MT; ++j) {
      const float ca = correction[16 * j + r], cb = correction[16 * j + r + 8];
#pragma unroll
      for (int nt = 0; nt < kOutTiles; ++nt) {
        o[j][nt][0] *= ca;
        o[j][nt][1] *= ca;
        o[j][nt][2] *= cb;
        o[j][nt][3] *= cb;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      if (16 * kk >= count) break;  // every probability of the k-step is 0
      uint32_t a[MT][4];
#pragma unroll
      for (int j = 0; j < MT; ++j) ldmatrix_x4(ps + swizzled(16 * j + (lane & 15), 16 * kk + (lane >> 4) * 8, kTile), a[j]);
#pragma unroll
      for (int np = 0; np < CW / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4_trans(kt + swizzled(16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, warp * CW + 16 * np + (lane >> 4) * 8, ld),
                          b);
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          mma<K>(o[j][2 * np], a[j], b[0], b[1]);
          mma<K>(o[j][2 * np + 1], a[j], b[2], b[3]);
        }
      }
    }
  }

  // Row sums: this thread's columns → its quad → the head tile's slices (added in slice order).
  l_a = quad_sum(l_a);
  l_b = quad_sum(l_b);
  if (c == 0) {
    red_sum[slice * kHeads + row_a] = l_a;
    red_sum[slice * kHeads + row_b] = l_b;
    if (slice == 0) {
      final_max[row_a] = m_a;
      final_max[row_b] = m_b;
    }
  }
  __syncthreads();
  const int64_t stride = kv_lora + 2;
  if (splits > 1 && static_cast<int>(threadIdx.x) < kHeads && h0 + static_cast<int>(threadIdx.x) < heads) {
    const int row = static_cast<int>(threadIdx.x);
    float l = 0.f;
#pragma unroll
    for (int k = 0; k < kSlices; ++k) l += red_sum[k * kHeads + row];
    float* part = partials + ((t * heads + h0 + row) * split_stride + split) * stride;
    part[0] = final_max[row];
    part[1] = l;
  }
#pragma unroll
  for (int j = 0; j < MT; ++j) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = 16 * j + r + 8 * half;
      const int64_t h = h0 + row;
      if (h >= heads) continue;
      if (splits == 1) {
        float l = 0.f;
#pragma unroll
        for (int k = 0; k < kSlices; ++k) l += red_sum[k * kHeads + row];
        const float inv = 1.f / l;
        float* dst = out + (t * heads + h) * kv_lora + warp * CW + 2 * c;
#pragma unroll
        for (int nt = 0; nt < kOutTiles; ++nt) {
          dst[8 * nt] = o[j][nt][2 * half] * inv;
          dst[8 * nt + 1] = o[j][nt][2 * half + 1] * inv;
        }
      } else {
        float* dst = partials + ((t * heads + h) * split_stride + split) * stride + 2 + warp * CW + 2 * c;
#pragma unroll
        for (int nt = 0; nt < kOutTiles; ++nt) {
          dst[8 * nt] = o[j][nt][2 * half];
          dst[8 * nt + 1] = o[j][nt][2 * half + 1];
        }
      }
    }
  }
}

int max_shared_bytes() {
  int device = 0, bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: clear it, the CUDA-core kernel runs instead
    return 0;
  }
  return bytes;
}

}  // namespace

bool mla_tensor_cores_enabled() {
  const char* v = std::getenv("TANDEM_CUDA_MLA_TC");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

bool mla_tensor_cores_supported(int64_t tokens, int64_t heads, int64_t kv_lora, int64_t rope_dim, const PagedKv& kv) {
  if (kv.type != KvType::f16 && kv.type != KvType::bf16) return false;
  if (kv_lora != 128 && kv_lora != 256 && kv_lora != 512) return false;
  if (rope_dim < 0 || rope_dim % 16 != 0 || rope_dim > 256 || heads <= 0 || tokens <= 0 || tokens > 65535) return false;
  if (head_groups(heads) > 65535 || kv.block_tokens <= 0) return false;
  const int64_t width = kv_lora + rope_dim;
  if (reinterpret_cast<uintptr_t>(kv.layer_base) % 16 != 0 || kv.block_stride % 16 != 0 || kv.row_bytes % 16 != 0 ||
      kv.row_bytes < 2 * width)
    return false;
  const size_t shared = shared_bytes(static_cast<int>(head_tiles(heads)), static_cast<int>(width));
  return shared <= static_cast<size_t>(max_shared_bytes());
}

int64_t mla_tensor_cores_target_splits(int64_t tokens, int64_t heads) {
  const int64_t blocks = tokens * head_groups(heads);
  return std::max<int64_t>(1, (kTargetBlocks + blocks - 1) / blocks);
}

int64_t mla_tensor_cores_split_slots(const DeviceBatch& b, int64_t heads) {
  return std::min(mla_tensor_cores_target_splits(b.tokens, heads), (b.max_context + kMlaTcTile - 1) / kMlaTcTile);
}

void mla_tensor_cores_splits(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                             const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                             int64_t target_splits, int64_t split_stride, float* partials, float* out) {
  const int64_t mt = head_tiles(heads);
  const dim3 grid(static_cast<unsigned>(head_groups(heads)), static_cast<unsigned>(split_stride),
                  static_cast<unsigned>(batch.tokens));
  const size_t shared = shared_bytes(static_cast<int>(mt), static_cast<int>(kv_lora + rope_dim));
  auto launch = [&](auto k, auto tiles, auto columns) {
    auto* kernel = mla_tc_kernel<decltype(k)::value, decltype(tiles)::value, decltype(columns)::value>;
    opt_in_shared_memory(kernel, shared, "mla_attention (tensor cores: shared memory opt-in)");
    launch_dependent(stream, "mla_attention (tensor cores)", kernel, grid, dim3(kThreads), shared, kv, batch, q_latent,
                     q_rope, static_cast<int>(heads), static_cast<int>(kv_lora), static_cast<int>(rope_dim),
                     softmax_scale, target_splits, split_stride, partials, out);
  };
  auto by_columns = [&](auto k, auto tiles) {
    if (kv_lora == 128) launch(k, tiles, std::integral_constant<int, 16>{});
    else if (kv_lora == 256) launch(k, tiles, std::integral_constant<int, 32>{});
    else launch(k, tiles, std::integral_constant<int, 64>{});
  };
  auto by_tiles = [&](auto k) {
    if (mt == 1) by_columns(k, std::integral_constant<int, 1>{});
    else if (mt == 2) by_columns(k, std::integral_constant<int, 2>{});
    else by_columns(k, std::integral_constant<int, 4>{});
  };
  if (kv.type == KvType::f16) by_tiles(std::integral_constant<KvType, KvType::f16>{});
  else by_tiles(std::integral_constant<KvType, KvType::bf16>{});
  check_launch("mla_attention (tensor cores)");
}

}  // namespace tandem::cuda::detail
