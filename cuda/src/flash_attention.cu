// Causal GQA attention of one sequence's prompt chunk on the tensor cores (flash attention): a block
// of four warps takes 64 query tokens of one head, each warp 16 of them. The block walks the cached
// positions 64 at a time up to its last token's; each tile's K and V rows are copied straight from
// the paged cache into shared memory as stored (f16 or bf16, cp.async, the next tile's copy in
// flight while this one is used). Scores S = Q·Kᵀ come from mma.sync with Q in registers as the
// cache's type; the online softmax (running max and sum per row, float32) rescales the output
// accumulators; the probabilities go back into the tensor cores, in the cache's type, as the A
// operand of O += P·V without passing through shared memory. The last query tiles (the most
// positions) are started first.
// Error: K and V are used exactly; Q and P are rounded to the cache's 16-bit type (f16 2⁻¹¹, bf16
// 2⁻⁸ relative), accumulation and softmax in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "launch.cuh"
#include "mma.cuh"
#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda {
namespace {

constexpr int kQueryTile = 64;  // query tokens per block (16 per warp)
constexpr int kKeyTile = 64;    // cached positions per step
constexpr int kThreads = 128;
constexpr int64_t kMinTokens = 64;  // fewer query tokens: the split-K kernel keeps more SMs busy

template <int D>
constexpr int row_stride() {  // shared row stride in 16-bit values: rows 16-byte aligned, ldmatrix conflict-free
  return D + 8;
}
template <int D>
constexpr size_t shared_bytes() {
  return size_t{2} * 2 * kKeyTile * row_stride<D>() * 2;  // two stages of K and V
}

template <KvType K>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  if constexpr (K == KvType::f16) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <KvType K>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (K == KvType::f16) detail::mma_f16(c, a, b0, b1);
  else detail::mma_bf16(c, a, b0, b1);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Thread (warp w, lane 4r + c) holds rows r and r + 8 of the warp's 16 query tokens, and in each
// 8-wide column tile of S and O the columns 2c and 2c + 1 (the mma accumulator layout).
template <KvType K, int D>
__global__ void __launch_bounds__(kThreads)
    flash_kernel(PagedKv kv, DeviceBatch batch, const float* q, int heads, int group, float scale_log2, float* out) {
  constexpr int kLd = row_stride<D>();
  extern __shared__ uint4 shared_words[];
  auto* k_stage = reinterpret_cast<uint16_t*>(shared_words);  // [2][kKeyTile][kLd]
  uint16_t* v_stage = k_stage + 2 * kKeyTile * kLd;
  const int64_t T = batch.tokens;
  const int64_t t0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kQueryTile;
  const int h = static_cast<int>(blockIdx.y), g = h / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;
  const int64_t last = t0 + kQueryTile - 1 < T ? t0 + kQueryTile - 1 : T - 1;
  const int64_t n_end = batch.positions[last] + 1;  // one sequence, increasing positions: the tile's widest
  const int32_t* table = batch.block_tables + last * batch.table_stride;
  const auto* base = static_cast<const uint8_t*>(kv.layer_base);

  const int64_t ta = t0 + warp * 16 + r, tb = ta + 8;
  // Rows past the batch attend to position 0 only (finite sums) and are not written.
  const int64_t pa = ta < T ? batch.positions[ta] : 0, pb = tb < T ? batch.positions[tb] : 0;
  const int64_t warp_last = t0 + warp * 16 + 15 < T ? t0 + warp * 16 + 15 : T - 1;
  const int64_t warp_end = t0 + warp * 16 < T ? batch.positions[warp_last] + 1 : 1;

  uint32_t qf[D / 16][4];
  {
    const float* qa = q + ((ta < T ? ta : T - 1) * heads + h) * int64_t{D} + 2 * c;
    const float* qb = q + ((tb < T ? tb : T - 1) * heads + h) * int64_t{D} + 2 * c;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
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
    constexpr int kChunks = D * 2 / 16;
    for (int i = threadIdx.x; i < kKeyTile * kChunks; i += kThreads) {
      const int row = i / kChunks, chunk = i % kChunks;
      const int64_t s = s0 + row < n_end ? s0 + row : n_end - 1;
      const uint8_t* block = base + static_cast<int64_t>(table[s / kv.block_tokens]) * kv.block_stride;
      const int64_t slot = s % kv.block_tokens, offset = (static_cast<int64_t>(g) * D + chunk * 8) * 2;
      const int shared_at = (stage * kKeyTile + row) * kLd + chunk * 8;
      detail::copy_async16(k_stage + shared_at, block + slot * kv.row_bytes + offset);
      detail::copy_async16(v_stage + shared_at, block + (kv.block_tokens + slot) * kv.row_bytes + offset);
    }
    detail::commit_copies();
  };

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;  // in log2 units; l: this thread's columns
  const int64_t tiles = (n_end + kKeyTile - 1) / kKeyTile;
  copy_tile(0, 0);
  for (int64_t i = 0; i < tiles; ++i) {
    if (i + 1 < tiles) {
      copy_tile((i + 1) * kKeyTile, static_cast<int>((i + 1) % 2));
      detail::wait_copies<1>();
    } else {
      detail::wait_copies<0>();
    }
    __syncthreads();
    const int64_t s0 = i * kKeyTile;
    if (s0 < warp_end) {  // else every row of this warp is causally before the tile
      const uint16_t* ks = k_stage + (i % 2) * kKeyTile * kLd;
      const uint16_t* vs = v_stage + (i % 2) * kKeyTile * kLd;
      float s[kKeyTile / 8][4];
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int p = 0; p < kKeyTile / 16; ++p) {
          uint32_t b[4];
          detail::ldmatrix_x4(ks + (p * 16 + lane % 8 + (lane / 16) * 8) * kLd + kk * 16 + ((lane / 8) % 2) * 8, b);
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
      mx_a = quad_max(mx_a);  // finite: every row sees position 0 in the first tile
      mx_b = quad_max(mx_b);
      const float ca = exp2f(m_a - mx_a), cb = exp2f(m_b - mx_b);  // 0 on the first tile
      m_a = mx_a;
      m_b = mx_b;
      l_a *= ca;
      l_b *= cb;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= ca;
        o[n][1] *= ca;
        o[n][2] *= cb;
        o[n][3] *= cb;
      }
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) {
        s[j][0] = exp2f(s[j][0] - mx_a);
        s[j][1] = exp2f(s[j][1] - mx_a);
        s[j][2] = exp2f(s[j][2] - mx_b);
        s[j][3] = exp2f(s[j][3] - mx_b);
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
        for (int np = 0; np < D / 16; ++np) {
          uint32_t b[4];
          detail::ldmatrix_x4_trans(vs + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kLd + np * 16 + (lane / 16) * 8,
                                    b);
          mma<K>(o[2 * np], a, b[0], b[1]);
          mma<K>(o[2 * np + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next copy overwrites it
  }
  const float inv_a = 1.f / quad_sum(l_a), inv_b = 1.f / quad_sum(l_b);
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    if (ta < T)
      *reinterpret_cast<float2*>(out + (ta * heads + h) * int64_t{D} + 8 * n + 2 * c) =
          make_float2(o[n][0] * inv_a, o[n][1] * inv_a);
    if (tb < T)
      *reinterpret_cast<float2*>(out + (tb * heads + h) * int64_t{D} + 8 * n + 2 * c) =
          make_float2(o[n][2] * inv_b, o[n][3] * inv_b);
  }
}

}  // namespace

bool flash_attention_supported(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               const PagedKv& kv) {
  const bool aligned = reinterpret_cast<uintptr_t>(kv.layer_base) % 16 == 0 && kv.row_bytes % 16 == 0 &&
                       kv.block_stride % 16 == 0;
  return b.one_sequence && b.tokens >= kMinTokens && (kv.type == KvType::f16 || kv.type == KvType::bf16) &&
         (head_dim == 64 || head_dim == 128) && kv_heads > 0 && heads % kv_heads == 0 && heads <= 65535 && aligned;
}

void flash_gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) {
  if (batch.tokens <= 0) return;
  if (!flash_attention_supported(batch, heads, kv_heads, head_dim, kv))
    throw Error(ErrorKind::internal,
                text("cuda flash_gqa_attention: unsupported batch or shape (", batch.tokens, " tokens, ", heads, "/",
                     kv_heads, " heads of ", head_dim, ")"));
  const dim3 grid(detail::grid_dim((batch.tokens + kQueryTile - 1) / kQueryTile, "flash_gqa_attention"),
                  static_cast<unsigned>(heads));
  const float scale_log2 = softmax_scale * static_cast<float>(M_LOG2E);
  auto launch = [&](auto k, auto d) {
    constexpr KvType kType = decltype(k)::value;
    constexpr int kDim = decltype(d)::value;
    auto* kernel = flash_kernel<kType, kDim>;
    detail::opt_in_shared_memory(kernel, shared_bytes<kDim>(), "flash_gqa_attention (shared memory opt-in)");
    kernel<<<grid, kThreads, shared_bytes<kDim>(), detail::native(stream)>>>(
        kv, batch, q, static_cast<int>(heads), static_cast<int>(heads / kv_heads), scale_log2, out);
  };
  auto by_dim = [&](auto k) {
    if (head_dim == 64) launch(k, std::integral_constant<int, 64>{});
    else launch(k, std::integral_constant<int, 128>{});
  };
  if (kv.type == KvType::f16) by_dim(std::integral_constant<KvType, KvType::f16>{});
  else by_dim(std::integral_constant<KvType, KvType::bf16>{});
  detail::check_launch("flash_gqa_attention");
}

}  // namespace tandem::cuda
