#pragma once
// Block sizes and small decoders of the stored weight layouts the kernels read (the layouts are
// documented with the reference decoders in src/formats/dequantize.cpp). Internal linkage on
// purpose: this header is included by files built for different ISAs, and a shared inline
// function could otherwise be linked in its AVX-512 build on a CPU without AVX-512.
#include <cstdint>

#include "formats/k_quant_scales.hpp"

namespace tandem::kernels {
namespace {

constexpr int64_t kQ4KBytes = 144;    // f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles
constexpr int64_t kQ5KBytes = 176;    // as Q4_K plus 32 bytes of fifth bits before the nibbles
constexpr int64_t kQ6KBytes = 210;    // 128 low nibbles, 64 high 2-bit parts, 16 int8 scales, f16 d
constexpr int64_t kIq4XsBytes = 136;  // f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes of nibbles
constexpr int64_t kQ8_0Bytes = 34;    // f16 d, 32 int8
constexpr int64_t kQ4_0Bytes = 18;    // f16 d, 16 bytes of nibbles
// f16 d, 4 bytes of fifth bits (bit j: value j), 16 bytes of nibbles (byte j: values j and j + 16);
// value = (nibble | fifth bit << 4) - 16. Q4_K_M's type for rows whose width is not a multiple of 256
// (DeepSeek-V2-Lite's 1408-wide expert down projections).
constexpr int64_t kQ5_0Bytes = 22;
// Q4_1 / Q5_1: Q4_0 / Q5_0 with an f16 minimum after d (value = d · q + m, q unsigned): Q5_K_M's type
// for rows whose width is not a multiple of 256.
constexpr int64_t kQ4_1Bytes = 20;
constexpr int64_t kQ5_1Bytes = 24;
// IQ4_NL: Q4_0's layout (f16 d, 16 bytes of nibbles, byte j: values j and j + 16) with each nibble an
// index into kIq4Values instead of q − 8 — IQ4_XS's codebook on 32-value blocks, its type for rows whose
// width is not a multiple of 256.
constexpr int64_t kIq4NlBytes = 18;

// The 32-value block types: bytes, and where the fifth bits and the nibbles start.
template <bool Q5, bool Min>
constexpr int64_t small_block_bytes() {
  return Q5 ? (Min ? kQ5_1Bytes : kQ5_0Bytes) : (Min ? kQ4_1Bytes : kQ4_0Bytes);
}
template <bool Min>
constexpr int64_t small_block_high_offset() {
  return Min ? 4 : 2;
}
template <bool Q5, bool Min>
constexpr int64_t small_block_nibble_offset() {
  return small_block_high_offset<Min>() + (Q5 ? 4 : 0);
}
constexpr int64_t kFp8Block = 128;    // DeepSeek's FP8 block scale covers 128×128

constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

using formats::unpack_k4_scales;

// IQ4_XS sub-block scale (already minus 32).
inline int iq4_xs_scale(const uint8_t* blk, int sub) {
  const int scales_h = blk[2] | (blk[3] << 8);
  return (((blk[4 + sub / 2] >> (4 * (sub % 2))) & 0xf) | (((scales_h >> (2 * sub)) & 3) << 4)) - 32;
}

}  // namespace
}  // namespace tandem::kernels
