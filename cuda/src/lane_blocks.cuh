#pragma once
// Q4_K and Q6_K rows read by a whole warp at a time: for each 256-value block, every lane loads
// one contiguous piece of the quants (4 bytes of Q4_K nibbles, 2+2+2 bytes of Q6_K), so a warp's
// load is one coalesced transaction, and takes the 8 values those bytes hold against the matching
// activations (float4/float2 loads). The GEMV over dequant.cuh's decoders gives each lane a whole
// 32-value chunk instead: 32 byte loads per lane, 32 cache lines per warp load of x. Sums are in a
// different order from the reference (which dequantises, then dots), within float rounding.
#include <cstdint>

#include "dequant.cuh"

namespace tandem::cuda::detail {

template <typename D>
struct LaneBlocks {
  static constexpr bool available = false;
};

// acc[r] += Σ over the lane's 8 values v of block `blk`: w_v · x[r · x_stride + v], for r < nrows.
template <>
struct LaneBlocks<Decoder<DType::q4_k>> {
  static constexpr bool available = true;
  template <int Tile>
  __device__ __forceinline__ static void accumulate(const uint8_t* row, int64_t blk, int lane, const float* x,
                                                    int64_t x_stride, int nrows, float* acc) {
    const uint8_t* b = row + blk * 144;
    const int g = lane >> 3, i0 = (lane & 7) * 4;  // sub-blocks 2g (low nibbles) and 2g+1 (high)
    const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 16 + 32 * g + i0);
    const float d = load_f16(b), dmin = load_f16(b + 2);
    int sc0, m0, sc1, m1;
    k4_scale_min(b + 4, 2 * g, sc0, m0);
    k4_scale_min(b + 4, 2 * g + 1, sc1, m1);
    const float dl0 = __fmul_rn(d, static_cast<float>(sc0)), ml0 = __fmul_rn(dmin, static_cast<float>(m0));
    const float dl1 = __fmul_rn(d, static_cast<float>(sc1)), ml1 = __fmul_rn(dmin, static_cast<float>(m1));
    const int64_t base = blk * 256 + 64 * g + i0;
#pragma unroll
    for (int r = 0; r < Tile; ++r) {
      if (r < nrows) {
        const float4 xa = *reinterpret_cast<const float4*>(x + r * x_stride + base);
        const float4 xb = *reinterpret_cast<const float4*>(x + r * x_stride + base + 32);
        const float lo = static_cast<float>(q & 0xf) * xa.x + static_cast<float>((q >> 8) & 0xf) * xa.y +
                         static_cast<float>((q >> 16) & 0xf) * xa.z + static_cast<float>((q >> 24) & 0xf) * xa.w;
        const float hi = static_cast<float>((q >> 4) & 0xf) * xb.x + static_cast<float>((q >> 12) & 0xf) * xb.y +
                         static_cast<float>((q >> 20) & 0xf) * xb.z + static_cast<float>((q >> 28) & 0xf) * xb.w;
        const float sa = (xa.x + xa.y) + (xa.z + xa.w), sb = (xb.x + xb.y) + (xb.z + xb.w);
        acc[r] += (dl0 * lo - ml0 * sa) + (dl1 * hi - ml1 * sb);
      }
    }
  }
};

template <>
struct LaneBlocks<Decoder<DType::q6_k>> {
  static constexpr bool available = true;
  template <int Tile>
  __device__ __forceinline__ static void accumulate(const uint8_t* row, int64_t blk, int lane, const float* x,
                                                    int64_t x_stride, int nrows, float* acc) {
    const uint8_t* b = row + blk * 210;
    const int half = lane >> 4, jp = (lane & 15) * 2;  // values 128·half + 32·quarter + {jp, jp + 1}
    const auto l0 = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(b + half * 64 + jp));
    const auto l1 = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(b + half * 64 + 32 + jp));
    const auto h = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(b + 128 + half * 32 + jp));
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = load_f16(b + 208);
    float v[8];  // quarter q: values 2q (j = jp) and 2q + 1 (j = jp + 1)
    float dl[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t low = (q & 1) ? l1 : l0;
      const int shift = q >= 2 ? 4 : 0;
      v[2 * q] = static_cast<float>(static_cast<int>(((low >> shift) & 0xf) | (((h >> (2 * q)) & 3) << 4)) - 32);
      v[2 * q + 1] =
          static_cast<float>(static_cast<int>(((low >> (8 + shift)) & 0xf) | (((h >> (8 + 2 * q)) & 3) << 4)) - 32);
      dl[q] = __fmul_rn(d, static_cast<float>(scales[(4 * half + q) * 2 + (jp >= 16 ? 1 : 0)]));
    }
    const int64_t base = blk * 256 + 128 * half + jp;
#pragma unroll
    for (int r = 0; r < Tile; ++r) {
      if (r < nrows) {
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float2 xv = *reinterpret_cast<const float2*>(x + r * x_stride + base + 32 * q);
          sum += dl[q] * (v[2 * q] * xv.x + v[2 * q + 1] * xv.y);
        }
        acc[r] += sum;
      }
    }
  }
};

}  // namespace tandem::cuda::detail
