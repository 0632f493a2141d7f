#pragma once
// Rows read by a whole warp at a time, in 256-value blocks: for each block every lane loads one
// contiguous piece (4 bytes of Q4_K nibbles, 2+2+2 bytes of Q6_K, 2×4 values of a plain row), so a
// warp's load is one coalesced transaction, and takes the 8 values those bytes hold against the
// matching activations (float4/float2 loads). The GEMV over dequant.cuh's decoders gives each lane a
// whole 32-value chunk instead: 32 byte loads per lane, 32 cache lines per warp load of x.
//
// A block is read in two steps, load (its bytes into registers) and dot, so that the loops below
// issue the loads of several blocks before the first product: a decode GEMV is bound by how many
// loads each warp keeps in flight, and a loop that loads and multiplies one block at a time waits a
// full memory latency per block (on the H200, ~15 µs for a 2048×4096 Q4_K matrix whose bytes take 1
// µs to stream). Sums are in a different order from the reference (which dequantises, then dots),
// within float rounding; the batched loops add the blocks in the same order as one at a time.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "dequant.cuh"

namespace tandem::cuda::detail {

template <typename D>
struct LaneBlocks {
  static constexpr bool available = false;
};

// Byte k (0–11) of the three words w0, w1, w2.
__device__ __forceinline__ int byte_of(uint32_t w0, uint32_t w1, uint32_t w2, int k) {
  const uint32_t word = k < 4 ? w0 : (k < 8 ? w1 : w2);
  return static_cast<int>((word >> ((k & 3) * 8)) & 0xffu);
}

template <>
struct LaneBlocks<Decoder<DType::q4_k>> {
  static constexpr bool available = true;
  static constexpr int64_t kBlockBytes = 144;
  // Rows 16-byte aligned are read wide: a warp step covers kUnitBlocks consecutive blocks, 8 lanes
  // each, every lane loading its block's 16-byte head and 16 bytes of nibbles (32 values) as two
  // uint4. Per register that keeps 2.5× the bytes in flight of the narrow form below (a whole head
  // per 4 bytes of nibbles), which is what bounds a decode GEMV.
  static constexpr int64_t kUnitBlocks = 4;
  struct Wide {
    uint4 head, q;
  };
  __device__ __forceinline__ static Wide load_wide(const uint8_t* row, int64_t blk, int lane) {
    const auto* b = reinterpret_cast<const uint4*>(row + blk * kBlockBytes);  // 9 uint4 per block
    return {b[0], b[1 + (lane & 7)]};
  }
  // The sub-block scale (6 bits) and minimum of sub-block j (0–7), from the head's words 1–3.
  __device__ __forceinline__ static void scale_min(const uint4& head, int j, int& scale, int& min) {
    const int a = byte_of(head.y, head.z, head.w, j);
    const int b = byte_of(head.y, head.z, head.w, j + 4);
    const int c = byte_of(head.y, head.z, head.w, j >= 4 ? j - 4 : j);
    scale = j < 4 ? (a & 63) : ((b & 0xf) | ((c >> 6) << 4));
    min = j < 4 ? (b & 63) : ((b >> 4) | ((a >> 6) << 4));
  }
  // A lane's part of a block from its sums: (dl0·lo − ml0·sa) + (dl1·hi − ml1·sb).
  __device__ __forceinline__ static float finish(const uint4& head, int g, float lo, float hi, float sa, float sb) {
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(head.x & 0xffffu)));
    const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(head.x >> 16)));
    int sc0, mn0, sc1, mn1;
    scale_min(head, 2 * g, sc0, mn0);
    scale_min(head, 2 * g + 1, sc1, mn1);
    const float dl0 = __fmul_rn(d, static_cast<float>(sc0)), ml0 = __fmul_rn(dmin, static_cast<float>(mn0));
    const float dl1 = __fmul_rn(d, static_cast<float>(sc1)), ml1 = __fmul_rn(dmin, static_cast<float>(mn1));
    return (dl0 * lo - ml0 * sa) + (dl1 * hi - ml1 * sb);
  }
  // lo/hi += the lane's low/high nibbles of word set q against xa/xb (4 values each).
  __device__ __forceinline__ static void nibble_dots(uint32_t q, const float4& xa, const float4& xb, float& lo,
                                                     float& hi) {
    lo += static_cast<float>(q & 0xf) * xa.x + static_cast<float>((q >> 8) & 0xf) * xa.y +
          static_cast<float>((q >> 16) & 0xf) * xa.z + static_cast<float>((q >> 24) & 0xf) * xa.w;
    hi += static_cast<float>((q >> 4) & 0xf) * xb.x + static_cast<float>((q >> 12) & 0xf) * xb.y +
          static_cast<float>((q >> 20) & 0xf) * xb.z + static_cast<float>((q >> 28) & 0xf) * xb.w;
  }
  template <int Tile>
  __device__ __forceinline__ static void dot_wide(const Wide& raw, int64_t blk, int lane, const float* x,
                                                  int64_t x_stride, int nrows, float* acc) {
    const int p = lane & 7, g = p >> 1, i0 = (p & 1) * 16;  // nibble bytes 32g + i0 … + 15
    const uint32_t q[4] = {raw.q.x, raw.q.y, raw.q.z, raw.q.w};
    const int64_t base = blk * 256 + 64 * g + i0;  // low nibbles: values base…+15; high: base+32…+47
#pragma unroll
    for (int r = 0; r < Tile; ++r) {
      if (r < nrows) {
        float lo = 0.f, hi = 0.f, sa = 0.f, sb = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const float4 xa = *reinterpret_cast<const float4*>(x + r * x_stride + base + 4 * w);
          const float4 xb = *reinterpret_cast<const float4*>(x + r * x_stride + base + 32 + 4 * w);
          nibble_dots(q[w], xa, xb, lo, hi);
          sa += (xa.x + xa.y) + (xa.z + xa.w);
          sb += (xb.x + xb.y) + (xb.z + xb.w);
        }
        acc[r] += finish(raw.head, g, lo, hi, sa, sb);
      }
    }
  }
  // dot_wide<1> of two rows' pieces of block `blk` against one x row, each x value loaded once.
  __device__ __forceinline__ static void dot_wide2(const Wide& ra, const Wide& rb, int64_t blk, int lane,
                                                   const float* x, float& acc_a, float& acc_b) {
    const int p = lane & 7, g = p >> 1, i0 = (p & 1) * 16;
    const uint32_t qa[4] = {ra.q.x, ra.q.y, ra.q.z, ra.q.w}, qb[4] = {rb.q.x, rb.q.y, rb.q.z, rb.q.w};
    const int64_t base = blk * 256 + 64 * g + i0;
    float lo_a = 0.f, hi_a = 0.f, lo_b = 0.f, hi_b = 0.f, sa = 0.f, sb = 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float4 xa = *reinterpret_cast<const float4*>(x + base + 4 * w);
      const float4 xb = *reinterpret_cast<const float4*>(x + base + 32 + 4 * w);
      nibble_dots(qa[w], xa, xb, lo_a, hi_a);
      nibble_dots(qb[w], xa, xb, lo_b, hi_b);
      sa += (xa.x + xa.y) + (xa.z + xa.w);
      sb += (xb.x + xb.y) + (xb.z + xb.w);
    }
    acc_a += finish(ra.head, g, lo_a, hi_a, sa, sb);
    acc_b += finish(rb.head, g, lo_b, hi_b, sa, sb);
  }

  // The narrow form: each lane loads the whole head and 4 bytes of nibbles (8 values) of every block.
  struct Raw {
    uint32_t head[4];  // d, dmin (f16 each), then the 12 bytes of packed 6-bit scales and minimums
    uint32_t q;        // this lane's 8 nibbles
  };
  // Rows must be 4-byte aligned (144-byte blocks keep that from the row's start).
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    const auto* b = reinterpret_cast<const uint32_t*>(row + blk * kBlockBytes);
    Raw r;
#pragma unroll
    for (int i = 0; i < 4; ++i) r.head[i] = b[i];
    r.q = b[4 + 8 * (lane >> 3) + (lane & 7)];  // bytes 16 + 32·g + 4·(lane mod 8)
    return r;
  }
  // acc[r] += Σ over the lane's 8 values v of block `blk`: w_v · x[r · x_stride + v], for r < nrows.
  template <int Tile>
  __device__ __forceinline__ static void dot(const Raw& raw, int64_t blk, int lane, const float* x, int64_t x_stride,
                                             int nrows, float* acc) {
    const int g = lane >> 3, i0 = (lane & 7) * 4;  // sub-blocks 2g (low nibbles) and 2g+1 (high)
    const uint32_t q = raw.q;
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.head[0] & 0xffffu)));
    const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.head[0] >> 16)));
    int sc[2], mn[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // the packing of k4_scale_min, for sub-block j = 2g + h
      const int j = 2 * g + h;
      const int a = byte_of(raw.head[1], raw.head[2], raw.head[3], j);
      const int b = byte_of(raw.head[1], raw.head[2], raw.head[3], j + 4);
      const int c = byte_of(raw.head[1], raw.head[2], raw.head[3], j >= 4 ? j - 4 : j);
      sc[h] = j < 4 ? (a & 63) : ((b & 0xf) | ((c >> 6) << 4));
      mn[h] = j < 4 ? (b & 63) : ((b >> 4) | ((a >> 6) << 4));
    }
    const float dl0 = __fmul_rn(d, static_cast<float>(sc[0])), ml0 = __fmul_rn(dmin, static_cast<float>(mn[0]));
    const float dl1 = __fmul_rn(d, static_cast<float>(sc[1])), ml1 = __fmul_rn(dmin, static_cast<float>(mn[1]));
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
  static constexpr int64_t kBlockBytes = 210;
  static constexpr int64_t kUnitBlocks = 1;
  struct Raw {
    uint32_t l0, l1, h;  // 16-bit pieces of the low nibbles (two) and the high bits
    uint32_t d;          // f16 bits
    int scale[4];        // the lane's scale of each quarter
  };
  // Rows must be 2-byte aligned (210-byte blocks keep that from the row's start).
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    const uint8_t* b = row + blk * kBlockBytes;
    const int half = lane >> 4, jp = (lane & 15) * 2;  // values 128·half + 32·quarter + {jp, jp + 1}
    Raw r;
    r.l0 = *reinterpret_cast<const uint16_t*>(b + half * 64 + jp);
    r.l1 = *reinterpret_cast<const uint16_t*>(b + half * 64 + 32 + jp);
    r.h = *reinterpret_cast<const uint16_t*>(b + 128 + half * 32 + jp);
    r.d = *reinterpret_cast<const uint16_t*>(b + 208);
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
#pragma unroll
    for (int q = 0; q < 4; ++q) r.scale[q] = scales[(4 * half + q) * 2 + (jp >= 16 ? 1 : 0)];
    return r;
  }
  template <int Tile>
  __device__ __forceinline__ static void dot(const Raw& raw, int64_t blk, int lane, const float* x, int64_t x_stride,
                                             int nrows, float* acc) {
    const int half = lane >> 4, jp = (lane & 15) * 2;
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(raw.d)));
    float v[8];  // quarter q: values 2q (j = jp) and 2q + 1 (j = jp + 1)
    float dl[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t low = (q & 1) ? raw.l1 : raw.l0;
      const int shift = q >= 2 ? 4 : 0;
      v[2 * q] = static_cast<float>(static_cast<int>(((low >> shift) & 0xf) | (((raw.h >> (2 * q)) & 3) << 4)) - 32);
      v[2 * q + 1] =
          static_cast<float>(static_cast<int>(((low >> (8 + shift)) & 0xf) | (((raw.h >> (8 + 2 * q)) & 3) << 4)) - 32);
      dl[q] = __fmul_rn(d, static_cast<float>(raw.scale[q]));
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

// Plain rows (f32, f16, bf16) for the linear kernel: lane l takes values 4l…4l+3 and 128+4l…128+4l+3
// of each 256-value block. Rows must be 16-byte aligned and a whole number of blocks wide, which the
// caller checks (the expert kernels keep the chunk path for them: tiny models' rows are narrower).
template <typename D>
struct PlainLaneBlocks {
  static constexpr bool available = false;
};

template <>
struct PlainLaneBlocks<Decoder<DType::f32>> {
  static constexpr bool available = true;
  struct Raw {
    float4 a, b;
  };
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    const auto* p = reinterpret_cast<const float4*>(row) + blk * 64;
    return {p[lane], p[32 + lane]};
  }
  __device__ __forceinline__ static void values(const Raw& raw, float* v) {
    v[0] = raw.a.x, v[1] = raw.a.y, v[2] = raw.a.z, v[3] = raw.a.w;
    v[4] = raw.b.x, v[5] = raw.b.y, v[6] = raw.b.z, v[7] = raw.b.w;
  }
};

template <typename Widen>
struct PlainLaneBlocks16 {  // Widen::widen: 16 stored bits to float
  static constexpr bool available = true;
  struct Raw {
    uint2 a, b;  // four 16-bit values each
  };
  __device__ __forceinline__ static Raw load(const uint8_t* row, int64_t blk, int lane) {
    const auto* p = reinterpret_cast<const uint2*>(row) + blk * 64;
    return {p[lane], p[32 + lane]};
  }
  __device__ __forceinline__ static void values(const Raw& raw, float* v) {
    const uint32_t words[4] = {raw.a.x, raw.a.y, raw.b.x, raw.b.y};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = Widen::widen(static_cast<unsigned short>(words[i] & 0xffffu));
      v[2 * i + 1] = Widen::widen(static_cast<unsigned short>(words[i] >> 16));
    }
  }
};

struct WidenF16 {
  __device__ __forceinline__ static float widen(unsigned short bits) { return __half2float(__ushort_as_half(bits)); }
};
struct WidenBf16 {
  __device__ __forceinline__ static float widen(unsigned short bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  }
};

template <>
struct PlainLaneBlocks<Decoder<DType::f16>> : PlainLaneBlocks16<WidenF16> {};
template <>
struct PlainLaneBlocks<Decoder<DType::bf16>> : PlainLaneBlocks16<WidenBf16> {};

// The dot of a plain block, as LaneBlocks::dot: values 4l… against x[4l…], 128+4l… against x[128+4l…].
template <typename P>
struct PlainDot : P {
  static constexpr int64_t kUnitBlocks = 1;
  template <int Tile>
  __device__ __forceinline__ static void dot(const typename P::Raw& raw, int64_t blk, int lane, const float* x,
                                             int64_t x_stride, int nrows, float* acc) {
    float v[8];
    P::values(raw, v);
    const int64_t base = blk * 256 + 4 * lane;
#pragma unroll
    for (int r = 0; r < Tile; ++r) {
      if (r < nrows) {
        const float4 xa = *reinterpret_cast<const float4*>(x + r * x_stride + base);
        const float4 xb = *reinterpret_cast<const float4*>(x + r * x_stride + base + 128);
        acc[r] += ((v[0] * xa.x + v[1] * xa.y) + (v[2] * xa.z + v[3] * xa.w)) +
                  ((v[4] * xb.x + v[5] * xb.y) + (v[6] * xb.z + v[7] * xb.w));
      }
    }
  }
};

// acc[r] += this lane's share of row · x[r] over the row's units first, first + step, … (a unit:
// L::kUnitBlocks consecutive 256-value blocks, the last one cut at `blocks`), the loads of Batch
// units issued before their products. L: LaneBlocks<D> or PlainDot<PlainLaneBlocks<D>>. A row
// that L reads wide but that is not 16-byte aligned is read narrow, unit by unit.
template <typename L, int Tile, int Batch>
__device__ __forceinline__ void lane_row_dot(const uint8_t* row, int64_t first, int64_t blocks, int64_t step, int lane,
                                             const float* x, int64_t x_stride, int nrows, float* acc) {
  constexpr int64_t U = L::kUnitBlocks;
  const int64_t units = (blocks + U - 1) / U;
  if constexpr (U > 1) {
    if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
      constexpr int kUnits = Batch / U > 0 ? Batch / U : 1;  // Batch counts blocks
      for (int64_t u0 = first; u0 < units; u0 += kUnits * step) {
        typename L::Wide raw[kUnits];
#pragma unroll
        for (int b = 0; b < kUnits; ++b) {
          const int64_t blk = (u0 + b * step) * U + lane / (32 / U);
          if (u0 + b * step < units && blk < blocks) raw[b] = L::load_wide(row, blk, lane);
        }
#pragma unroll
        for (int b = 0; b < kUnits; ++b) {
          const int64_t blk = (u0 + b * step) * U + lane / (32 / U);
          if (u0 + b * step < units && blk < blocks) L::template dot_wide<Tile>(raw[b], blk, lane, x, x_stride, nrows, acc);
        }
      }
      return;
    }
  }
  if constexpr (U == 1) {
    for (int64_t blk0 = first; blk0 < blocks; blk0 += Batch * step) {
      typename L::Raw raw[Batch];
#pragma unroll
      for (int b = 0; b < Batch; ++b)
        if (blk0 + b * step < blocks) raw[b] = L::load(row, blk0 + b * step, lane);
#pragma unroll
      for (int b = 0; b < Batch; ++b)
        if (blk0 + b * step < blocks) L::template dot<Tile>(raw[b], blk0 + b * step, lane, x, x_stride, nrows, acc);
    }
  } else {
    for (int64_t u = first; u < units; u += step) {
      const int64_t end = (u + 1) * U < blocks ? (u + 1) * U : blocks;
      for (int64_t blk0 = u * U; blk0 < end; blk0 += Batch) {
        typename L::Raw raw[Batch];
#pragma unroll
        for (int b = 0; b < Batch; ++b)
          if (blk0 + b < end) raw[b] = L::load(row, blk0 + b, lane);
#pragma unroll
        for (int b = 0; b < Batch; ++b)
          if (blk0 + b < end) L::template dot<Tile>(raw[b], blk0 + b, lane, x, x_stride, nrows, acc);
      }
    }
  }
}

// Two rows against one x row (an expert's gate and up), both rows' loads in flight together (Batch
// blocks of each); the sums as lane_row_dot's over all units.
template <typename L, int Batch>
__device__ __forceinline__ void lane_row_dot2(const uint8_t* row_a, const uint8_t* row_b, int64_t blocks, int lane,
                                              const float* x, float& acc_a, float& acc_b) {
  constexpr int64_t U = L::kUnitBlocks;
  if constexpr (U > 1) {
    if (reinterpret_cast<uintptr_t>(row_a) % 16 == 0 && reinterpret_cast<uintptr_t>(row_b) % 16 == 0) {
      const int64_t units = (blocks + U - 1) / U;
      constexpr int kUnits = Batch / U > 0 ? Batch / U : 1;  // Batch counts blocks
      for (int64_t u0 = 0; u0 < units; u0 += kUnits) {
        typename L::Wide ra[kUnits], rb[kUnits];
#pragma unroll
        for (int b = 0; b < kUnits; ++b) {
          const int64_t blk = (u0 + b) * U + lane / (32 / U);
          if (u0 + b < units && blk < blocks) {
            ra[b] = L::load_wide(row_a, blk, lane);
            rb[b] = L::load_wide(row_b, blk, lane);
          }
        }
#pragma unroll
        for (int b = 0; b < kUnits; ++b) {
          const int64_t blk = (u0 + b) * U + lane / (32 / U);
          if (u0 + b < units && blk < blocks) L::dot_wide2(ra[b], rb[b], blk, lane, x, acc_a, acc_b);
        }
      }
      return;
    }
  }
  lane_row_dot<L, 1, 4>(row_a, 0, blocks, 1, lane, x, 0, 1, &acc_a);
  lane_row_dot<L, 1, 4>(row_b, 0, blocks, 1, lane, x, 0, 1, &acc_b);
}

}  // namespace tandem::cuda::detail
