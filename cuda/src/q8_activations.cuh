#pragma once
// Activations quantised to int8 for integer products with 4- and 6-bit weights (`dp4a` on masked
// nibbles: a few instructions per 4 weights, where converting each nibble to float and multiplying
// takes four per weight, which is what bounds the float GEMVs). Each group of G values keeps a float
// scale d = max|x| / 127 and codes q = round(x / d) in [-127, 127]; each run of min(G, 16) values
// keeps the sum of its codes (the Q4_K minimum's term). G = 32 for a layer input quantised inside a
// kernel (quantize_q8_32); G = 8 for the routed experts' SiLU-GLU outputs, which a block of 8 rows
// quantises as it writes them. The host definition is tandem::cuda::quantize_q8_reference.
#include <cstdint>

#include "lane_blocks.cuh"
#include "launch.cuh"

namespace tandem::cuda::detail {

template <int G>
struct Q8View {
  static constexpr int kSumRun = G < 16 ? G : 16;
  const int8_t* q;     // [n]
  const float* d;      // [n / G]
  const int32_t* sum;  // [n / kSumRun]
  // The view of values from `offset` on (a multiple of G and of kSumRun).
  __device__ __forceinline__ Q8View at(int64_t offset) const {
    return {q + offset, d + offset / G, sum + offset / kSumRun};
  }
};

// Bytes the arrays of n values take (q, then d, then sum; each 16-byte aligned), and their places.
template <int G>
__host__ __device__ constexpr int64_t q8_bytes(int64_t n) {
  return (n + 15) / 16 * 16 + (n / G * 4 + 15) / 16 * 16 + n / Q8View<G>::kSumRun * 4;
}
template <int G>
struct Q8Arrays {
  int8_t* q;
  float* d;
  int32_t* sum;
  __host__ __device__ Q8View<G> view() const { return {q, d, sum}; }
};
template <int G>
__host__ __device__ inline Q8Arrays<G> q8_arrays(void* base, int64_t n) {
  auto* b = static_cast<char*>(base);
  const int64_t d_at = (n + 15) / 16 * 16, sum_at = d_at + (n / G * 4 + 15) / 16 * 16;
  return {reinterpret_cast<int8_t*>(b), reinterpret_cast<float*>(b + d_at), reinterpret_cast<int32_t*>(b + sum_at)};
}

// The scale of a group whose largest magnitude is amax, and the factor that turns values into codes.
__device__ __forceinline__ void q8_scale(float amax, float& d, float& inv) {
  d = __fdiv_rn(amax, 127.f);
  inv = amax > 0.f ? __fdiv_rn(127.f, amax) : 0.f;
}

// x [n] (n a multiple of 256, 16-byte aligned) quantised per 32 into `a` by the whole block
// (blockDim a multiple of 32): each thread 8 values, a group's 4 threads sharing its maximum by
// shuffles. The caller synchronises the block before reading `a`.
__device__ __forceinline__ void quantize_q8_32(const float* x, int64_t n, const Q8Arrays<32>& a) {
  const int lane = threadIdx.x % 32;
  const int64_t step = static_cast<int64_t>(blockDim.x) * 8;
  const int64_t rounds = (n + step - 1) / step;  // the same for every thread: shuffles stay whole-warp
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t base = r * step + static_cast<int64_t>(threadIdx.x) * 8;
    const bool in = base < n;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (in) {
      const float4 a0 = *reinterpret_cast<const float4*>(x + base);
      const float4 a1 = *reinterpret_cast<const float4*>(x + base + 4);
      v[0] = a0.x, v[1] = a0.y, v[2] = a0.z, v[3] = a0.w, v[4] = a1.x, v[5] = a1.y, v[6] = a1.z, v[7] = a1.w;
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    float d, inv;
    q8_scale(amax, d, inv);
    int32_t codes[8];
    int32_t sum = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      codes[i] = __float2int_rn(__fmul_rn(v[i], inv));
      sum += codes[i];
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (in) {
      uint32_t w0 = 0, w1 = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        w0 |= (static_cast<uint32_t>(codes[i]) & 0xffu) << (8 * i);
        w1 |= (static_cast<uint32_t>(codes[4 + i]) & 0xffu) << (8 * i);
      }
      *reinterpret_cast<uint2*>(a.q + base) = make_uint2(w0, w1);
      if ((lane & 1) == 0) a.sum[base / 16] = sum;
      if ((lane & 3) == 0) a.d[base / 32] = d;
    }
  }
}

// One group of 8 values (v) quantised into group `g` of `a` by one thread.
__device__ __forceinline__ void quantize_q8_8(const float* v, int64_t g, const Q8Arrays<8>& a) {
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
  float d, inv;
  q8_scale(amax, d, inv);
  uint32_t w[2] = {0, 0};
  int32_t sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int32_t c = __float2int_rn(__fmul_rn(v[i], inv));
    sum += c;
    w[i / 4] |= (static_cast<uint32_t>(c) & 0xffu) << (8 * (i % 4));
  }
  *reinterpret_cast<uint2*>(a.q + 8 * g) = make_uint2(w[0], w[1]);
  a.d[g] = d;
  a.sum[g] = sum;
}

// Row readers for the integer products, one per weight type: a warp step reads kUnitBlocks blocks
// (load, then dot, so that several blocks' loads are in flight), each lane returning its part.
template <DType T>
struct Q8Lanes;

// Q4_K rows 16-byte aligned, read wide as LaneBlocks<Q4_K> does: 8 lanes per block, each lane the
// block's head and 16 nibble bytes (values base…+15 low, base+32…+47 high).
template <>
struct Q8Lanes<DType::q4_k> {
  using L = LaneBlocks<Decoder<DType::q4_k>>;
  static constexpr int64_t kUnitBlocks = L::kUnitBlocks;
  using Raw = L::Wide;
  static constexpr int kAlignment = 16;
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    return L::load_wide(row, blk, lane);
  }
  // Σ over one 16-value run of nibbles (4 words of 4) against the codes from `at`: d·sc·Σ_k xd_k·dot_k −
  // dmin·mn·Σ_k xd_k·sum_k over the run's activation groups k (one for G = 32, two for G = 8).
  template <int G>
  __device__ __forceinline__ static float run(const uint32_t* nibbles, const Q8View<G>& x, int64_t at, float dsc,
                                              float mmn) {
    constexpr int S = Q8View<G>::kSumRun, kWords = S / 4;
    const auto* xq = reinterpret_cast<const int32_t*>(x.q + at);
    float scaled = 0.f, minimum = 0.f;
#pragma unroll
    for (int k = 0; k < 16 / S; ++k) {
      int32_t dot = 0;
#pragma unroll
      for (int w = 0; w < kWords; ++w) dot = __dp4a(static_cast<int32_t>(nibbles[k * kWords + w]), xq[k * kWords + w], dot);
      const float xd = x.d[(at + k * S) / G];
      scaled += xd * static_cast<float>(dot);
      minimum += xd * static_cast<float>(x.sum[(at + k * S) / S]);
    }
    return dsc * scaled - mmn * minimum;
  }
  template <int G>
  __device__ __forceinline__ static float dot(const Raw& raw, int64_t blk, int lane, const Q8View<G>& x) {
    const int p = lane & 7, g = p >> 1, i0 = (p & 1) * 16;
    const int64_t base = blk * 256 + 64 * g + i0;
    const uint32_t q[4] = {raw.q.x, raw.q.y, raw.q.z, raw.q.w};
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      lo[w] = q[w] & 0x0f0f0f0fu;
      hi[w] = (q[w] >> 4) & 0x0f0f0f0fu;
    }
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.head.x & 0xffffu)));
    const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.head.x >> 16)));
    int sc0, mn0, sc1, mn1;
    L::scale_min(raw.head, 2 * g, sc0, mn0);
    L::scale_min(raw.head, 2 * g + 1, sc1, mn1);
    return run(lo, x, base, d * static_cast<float>(sc0), dmin * static_cast<float>(mn0)) +
           run(hi, x, base + 32, d * static_cast<float>(sc1), dmin * static_cast<float>(mn1));
  }
};

// Q6_K rows (2-byte aligned: 210-byte blocks): lane = (half h, pair q, j0) reads 4 bytes of low nibbles
// at 64h + 32q + j0 (quarter q's values in the low nibbles, quarter q+2's in the high) and the 4 bytes
// of high bits at 128 + 32h + j0, as 16-bit pieces: values 128h + 32q + j0…+3 and the same +64.
template <>
struct Q8Lanes<DType::q6_k> {
  static constexpr int64_t kUnitBlocks = 1;
  static constexpr int64_t kBlockBytes = 210;
  static constexpr int kAlignment = 2;
  struct Raw {
    uint32_t ql, qh;
    uint32_t meta;  // the block's f16 d in the low half, the two quarters' int8 scales above it
  };
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    const uint8_t* b = row + blk * kBlockBytes;
    const int h = lane >> 4, q = (lane >> 3) & 1, j0 = (lane & 7) * 4;
    const auto* l = reinterpret_cast<const uint16_t*>(b + 64 * h + 32 * q + j0);
    const auto* hb = reinterpret_cast<const uint16_t*>(b + 128 + 32 * h + j0);
    const uint8_t* scales = b + 192 + 8 * h + (j0 >= 16 ? 1 : 0);
    Raw r;
    r.ql = static_cast<uint32_t>(l[0]) | (static_cast<uint32_t>(l[1]) << 16);
    r.qh = static_cast<uint32_t>(hb[0]) | (static_cast<uint32_t>(hb[1]) << 16);
    r.meta = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(b + 208)) |
             (static_cast<uint32_t>(scales[2 * q]) << 16) | (static_cast<uint32_t>(scales[2 * (q + 2)]) << 24);
    return r;
  }
  template <int G>
  __device__ __forceinline__ static float dot(const Raw& raw, int64_t blk, int lane, const Q8View<G>& x) {
    const int h = lane >> 4, q = (lane >> 3) & 1, j0 = (lane & 7) * 4;
    // 6-bit codes 0…63 per byte, then −32 (no byte borrows: each stays within 0…63 before).
    const uint32_t wa = __vsub4((raw.ql & 0x0f0f0f0fu) | (((raw.qh >> (2 * q)) & 0x03030303u) << 4), 0x20202020u);
    const uint32_t wb =
        __vsub4(((raw.ql >> 4) & 0x0f0f0f0fu) | (((raw.qh >> (2 * q + 4)) & 0x03030303u) << 4), 0x20202020u);
    const int64_t at = blk * 256 + 128 * h + 32 * q + j0;
    const int32_t ia = __dp4a(static_cast<int32_t>(wa), *reinterpret_cast<const int32_t*>(x.q + at), 0);
    const int32_t ib = __dp4a(static_cast<int32_t>(wb), *reinterpret_cast<const int32_t*>(x.q + at + 64), 0);
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.meta & 0xffffu)));
    const int scale_a = static_cast<int8_t>((raw.meta >> 16) & 0xffu), scale_b = static_cast<int8_t>(raw.meta >> 24);
    return d * (x.d[at / G] * static_cast<float>(scale_a * ia) + x.d[(at + 64) / G] * static_cast<float>(scale_b * ib));
  }
};

// This lane's parts of the dots of rows[r] (r < nrows; blocks first, first + step, … of `blocks`,
// counted in units of Q::kUnitBlocks) with quantised activations: each round loads Batch blocks of
// every row before the first product, so Rows × Batch blocks' loads are in flight, and each row adds
// its blocks in lane_row_dot_q8's order (the same bits as one row at a time).
template <typename Q, int Batch, int Rows, int G>
__device__ __forceinline__ void lane_rows_dot_q8(const uint8_t* const (&rows)[Rows], int nrows, int64_t first,
                                                 int64_t blocks, int64_t step, int lane, const Q8View<G>& x,
                                                 float (&acc)[Rows]) {
  constexpr int64_t U = Q::kUnitBlocks;
  constexpr int kUnits = Batch / U > 0 ? Batch / U : 1;
  const int64_t units = (blocks + U - 1) / U;
#pragma unroll
  for (int r = 0; r < Rows; ++r) acc[r] = 0.f;
  for (int64_t u0 = first; u0 < units; u0 += kUnits * step) {
    typename Q::Raw raw[Rows][kUnits];
#pragma unroll
    for (int r = 0; r < Rows; ++r)
#pragma unroll
      for (int b = 0; b < kUnits; ++b) {
        const int64_t blk = (u0 + b * step) * U + lane / (32 / U);
        if (r < nrows && u0 + b * step < units && blk < blocks) raw[r][b] = Q::load(rows[r], blk, lane);
      }
#pragma unroll
    for (int r = 0; r < Rows; ++r)
#pragma unroll
      for (int b = 0; b < kUnits; ++b) {
        const int64_t blk = (u0 + b * step) * U + lane / (32 / U);
        if (r < nrows && u0 + b * step < units && blk < blocks) acc[r] += Q::dot(raw[r][b], blk, lane, x);
      }
  }
}

// This lane's part of the dot of one row, Batch blocks' loads in flight.
template <typename Q, int Batch, int G>
__device__ __forceinline__ float lane_row_dot_q8(const uint8_t* row, int64_t first, int64_t blocks, int64_t step,
                                                 int lane, const Q8View<G>& x) {
  const uint8_t* const rows[1] = {row};
  float acc[1];
  lane_rows_dot_q8<Q, Batch>(rows, 1, first, blocks, step, lane, x, acc);
  return acc[0];
}

}  // namespace tandem::cuda::detail
