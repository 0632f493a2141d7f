#pragma once
// A warp writes a Q4_K or Q6_K row out as bf16 a 256-value block at a time: lane l takes the block's
// values [8l, 8l + 8), so each block is one coalesced 512-byte store of 16 bytes a lane and its
// codes come in loads that neighbouring lanes share. Decoder<T>::chunk, a lane per 32 values, loads
// its codes a byte at a time from four blocks per warp instruction: the cuBLAS experts' bf16 copies
// ran at ~1.2 TB/s that way (Nsight Compute, H100, a 4,096-token Qwen3-30B-A3B pass). Each value is
// the decoder's arithmetic (the same float operations in the same order) rounded to bf16 as
// store32 rounds it: the same bits.
#include <cuda_bf16.h>

#include <cstdint>

#include "dequant.cuh"

namespace tandem::cuda::detail {

// Bf16Rows<D>::available: whether a warp can write rows of decoder D this way; aligned(row, dst):
// whether this row and destination suit it (uniform across the warp); blocks(row, first, end, step,
// lane, dst) writes blocks first, first + step, … (< end) of the row to their places in dst.
template <typename D>
struct Bf16Rows {
  static constexpr bool available = false;
};

template <>
struct Bf16Rows<Decoder<DType::q4_k>> {
  static constexpr bool available = true;
  // Each lane's 8 code bytes lie 8-byte aligned in its block when the row does (144 = 18 · 8).
  __device__ __forceinline__ static bool aligned(const uint8_t* row, const __nv_bfloat16* dst) {
    return reinterpret_cast<uintptr_t>(row) % 8 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  }
  __device__ __forceinline__ static void blocks(const uint8_t* row, int64_t first, int64_t end, int64_t step, int lane,
                                                __nv_bfloat16* dst) {
    const int sub = lane / 4, part = lane % 4, shift = (sub % 2) * 4;
    for (int64_t i = first; i < end; i += step) {
      const uint8_t* b = row + i * 144;
      const uint2 codes = *reinterpret_cast<const uint2*>(b + 16 + (sub / 2) * 32 + part * 8);
      const float d = load_f16(b), dmin = load_f16(b + 2);
      int scale, min;
      k4_scale_min(b + 4, sub, scale, min);
      const float dl = __fmul_rn(d, static_cast<float>(scale)), ml = __fmul_rn(dmin, static_cast<float>(min));
      float y[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t byte = ((j < 4 ? codes.x : codes.y) >> (8 * (j % 4))) & 0xffu;
        y[j] = __fsub_rn(__fmul_rn(dl, static_cast<float>((byte >> shift) & 0xfu)), ml);
      }
      store8_bf16(dst + i * 256 + lane * 8, y);
    }
  }
};

template <>
struct Bf16Rows<Decoder<DType::q6_k>> {
  static constexpr bool available = true;
  // 210-byte blocks: the codes come two bytes at a time (rows 2-byte aligned).
  __device__ __forceinline__ static bool aligned(const uint8_t* row, const __nv_bfloat16* dst) {
    return reinterpret_cast<uintptr_t>(row) % 2 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  }
  __device__ __forceinline__ static void blocks(const uint8_t* row, int64_t first_block, int64_t end, int64_t step,
                                                int lane, __nv_bfloat16* dst) {
    const int sub = lane / 4, first = (lane % 4) * 8;  // the lane's values: sub-block sub, [first, first + 8)
    const int half = sub / 4, quarter = sub % 4;
    for (int64_t i = first_block; i < end; i += step) {
      const uint8_t* b = row + i * 210;
      const auto* ql = reinterpret_cast<const uint16_t*>(b + half * 64 + (quarter % 2) * 32 + first);
      const auto* qh = reinterpret_cast<const uint16_t*>(b + 128 + half * 32 + first);
      uint32_t low[4], high[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) low[k] = ql[k], high[k] = qh[k];
      const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float dl = __fmul_rn(load_f16(b + 208), static_cast<float>(scales[sub * 2 + (first < 16 ? 0 : 1)]));
      float y[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t l = (low[j / 2] >> (8 * (j % 2))) & 0xffu, h = (high[j / 2] >> (8 * (j % 2))) & 0xffu;
        const int lo = quarter < 2 ? static_cast<int>(l & 0xfu) : static_cast<int>(l >> 4);
        const int hi = static_cast<int>((h >> (2 * quarter)) & 3u);
        y[j] = __fmul_rn(dl, static_cast<float>((lo | (hi << 4)) - 32));
      }
      store8_bf16(dst + i * 256 + lane * 8, y);
    }
  }
};

}  // namespace tandem::cuda::detail
