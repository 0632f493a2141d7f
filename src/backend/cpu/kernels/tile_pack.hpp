#pragma once
// Packing a strip of up to 16 weight rows for the tile kernels (tile_avx512.cpp, tile_amx.cpp): the
// quants, unpacked to unsigned bytes, gathered into the order [value / 4][row][4] — per 4
// consecutive values the 16 rows side by side, which is AMX's B-tile layout and what one vpdpbusd
// multiplies for 16 rows at once — and per scale group (32 values for Q4_K/Q5_K/IQ4_XS, 16 for Q6_K)
// and row the float factors of the group's integer dot product and of the activation's group sum
// (the K-quants' minimums, Q6_K's −32 offset, IQ4_XS's +128). Layout of the workspace: tile_layout.hpp.
// Internal linkage and AVX-512 intrinsics: include only from files built with the AVX-512 flags.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/quant_layouts.hpp"
#include "backend/cpu/kernels/stored_elements.hpp"
#include "backend/cpu/kernels/tile_layout.hpp"

namespace tandem::kernels {
namespace {

// The strip's rows (row r at base + r·row_stride; rows past `rows` read as zeros). transpose(p, out):
// for the 32 bytes at the same offset `p` of every row, out[k] = dword k of rows 0..15 side by side —
// a 16×8 dword transpose done as two 8×8 transposes in the halves of each zmm (rows 0-7 low, 8-15
// high), then one two-source permute per output to interleave 128-bit lanes.
struct StripRows {
  int64_t row_stride;
  int rows;
  void transpose(const uint8_t* p, __m512i out[8]) const {
    __m512i a[8];
    for (int i = 0; i < 8; ++i) {
      const __m256i lo = i < rows ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * row_stride))
                                  : _mm256_setzero_si256();
      const __m256i hi = i + 8 < rows
                             ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + (i + 8) * row_stride))
                             : _mm256_setzero_si256();
      a[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    __m512i t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);      // dwords 0,1 | 4,5 of two rows
      t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);  // dwords 2,3 | 6,7
    }
    // u[c] (c < 4): dword c (lanes 0, 2) and c + 4 (lanes 1, 3) of rows 0-3 / 8-11; u[c + 4]: rows 4-7 / 12-15.
    const __m512i u[8] = {_mm512_unpacklo_epi64(t[0], t[2]), _mm512_unpackhi_epi64(t[0], t[2]),
                          _mm512_unpacklo_epi64(t[1], t[3]), _mm512_unpackhi_epi64(t[1], t[3]),
                          _mm512_unpacklo_epi64(t[4], t[6]), _mm512_unpackhi_epi64(t[4], t[6]),
                          _mm512_unpacklo_epi64(t[5], t[7]), _mm512_unpackhi_epi64(t[5], t[7])};
    const __m512i first = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int c = 0; c < 4; ++c) {
      out[c] = _mm512_permutex2var_epi64(u[c], first, u[c + 4]);
      out[c + 4] = _mm512_permutex2var_epi64(u[c], second, u[c + 4]);
    }
  }
};

// For the 16 bytes at `p` of every row: out[k] = dword k of rows 0..15 side by side (4 outputs). Rows
// r, r + 4, r + 8, r + 12 share a register, one per 128-bit lane, so a 4×4 dword transpose inside the
// lanes puts row 4L + j of lane L at dword 4L + j.
inline void transpose16(const StripRows& strip, const uint8_t* p, __m512i out[4]) {
  const auto row = [&](int r) {
    return r < strip.rows ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + r * strip.row_stride))
                          : _mm_setzero_si128();
  };
  __m512i a[4];
  for (int i = 0; i < 4; ++i) {
    a[i] = _mm512_castsi128_si512(row(i));
    a[i] = _mm512_inserti32x4(a[i], row(i + 4), 1);
    a[i] = _mm512_inserti32x4(a[i], row(i + 8), 2);
    a[i] = _mm512_inserti32x4(a[i], row(i + 12), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpacklo_epi32(a[2], a[3]);
  const __m512i t2 = _mm512_unpackhi_epi32(a[0], a[1]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
  out[0] = _mm512_unpacklo_epi64(t0, t1);
  out[1] = _mm512_unpackhi_epi64(t0, t1);
  out[2] = _mm512_unpacklo_epi64(t2, t3);
  out[3] = _mm512_unpackhi_epi64(t2, t3);
}

// Strips of the 32-value block types (one f16 scale per row and block; Q4_1/Q5_1 also an f16
// minimum): per block, 8 × 64 bytes of unsigned quants in [value / 4][row][4] order, then the 16 rows'
// float scales, then (Q4_1/Q5_1) their float minimums — tile_small_block_bytes<Min>() in all; in · 20
// bytes at most fit in tile_workspace_size(in). Q8_0's int8 quants are stored + 128 (xor 0x80), the
// others as nibble | fifth bit << 4; the kernels subtract 128, 8 or 16 times the activation block's
// sum (Q4_1/Q5_1: add the minimum times it).
constexpr int64_t kTileQ8BlockBytes = 8 * 64 + 16 * 4;
template <bool Min>
constexpr int64_t tile_small_block_bytes() {
  return kTileQ8BlockBytes + (Min ? 16 * 4 : 0);
}

inline void pack_q8_0(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < in / 32; ++b) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + b * kTileQ8BlockBytes);
    __m512i quads[8];
    strip.transpose(blk + 2, quads);
    for (int k = 0; k < 8; ++k) _mm512_store_si512(packed + k, _mm512_xor_si512(quads[k], flip));
    auto* scale = reinterpret_cast<float*>(packed + 8);
    for (int r = 0; r < kTileRows; ++r) scale[r] = r < rows ? half(blk + r * row_stride) : 0.0f;
  }
}

// Q4_0, Q5_0, Q4_1, Q5_1 (small_block_* offsets): nibbles of byte j are values j and j + 16; Q5's
// fifth bit of value j is bit j of a 32-bit word.
template <bool Q5, bool Min>
inline void pack_small(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f);
  const __m512i row_index = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __mmask16 present = static_cast<__mmask16>((1u << rows) - 1u);
  constexpr int64_t kBytes = small_block_bytes<Q5, Min>();
  for (int64_t b = 0; b < in / 32; ++b) {
    const uint8_t* blk = w + b * kBytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + b * tile_small_block_bytes<Min>());
    __m512i quads[4];
    transpose16(strip, blk + small_block_nibble_offset<Q5, Min>(), quads);
    __m512i high = _mm512_setzero_si512();
    if constexpr (Q5)  // each row's 32 fifth bits
      high = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), present,
                                         _mm512_mullo_epi32(row_index, _mm512_set1_epi32(static_cast<int>(row_stride))),
                                         blk + small_block_high_offset<Min>(), 1);
    for (int k = 0; k < 8; ++k) {
      __m512i value = k < 4 ? _mm512_and_si512(quads[k], m4) : _mm512_and_si512(_mm512_srli_epi32(quads[k - 4], 4), m4);
      if constexpr (Q5) {  // the 4 bits of values 4k..4k+3 spread to bit 4 of their bytes
        const __m512i bits = _mm512_srli_epi32(high, 4 * k);
        for (int i = 0; i < 4; ++i)
          value = _mm512_or_si512(
              value, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, i), _mm512_set1_epi32(1)), 8 * i + 4));
      }
      _mm512_store_si512(packed + k, value);
    }
    auto* scale = reinterpret_cast<float*>(packed + 8);
    for (int r = 0; r < kTileRows; ++r) scale[r] = r < rows ? half(blk + r * row_stride) : 0.0f;
    if constexpr (Min) {
      auto* minimum = reinterpret_cast<float*>(packed + 9);
      for (int r = 0; r < kTileRows; ++r) minimum[r] = r < rows ? half(blk + r * row_stride + 2) : 0.0f;
    }
  }
}

// IQ4_NL and IQ4_XS: the codebook value + 128 (unsigned, 1..241) of each nibble, by one vpshufb
// through the 16 table bytes in every 128-bit lane; the kernels subtract 128 times the activation
// sum. `nibbles`: 16 bytes per row, byte j holding values j (low) and j + 16 (high); out[k] as
// pack_small stores them (values 4k..4k+3 of the 32).
inline void iq4_codes(const StripRows& strip, const uint8_t* nibbles, __m512i out[8]) {
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f);
  const __m512i lut = _mm512_xor_si512(
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values))),
      _mm512_set1_epi8(static_cast<char>(0x80)));
  __m512i quads[4];
  transpose16(strip, nibbles, quads);
  for (int k = 0; k < 8; ++k)
    out[k] = _mm512_shuffle_epi8(
        lut, k < 4 ? _mm512_and_si512(quads[k], m4) : _mm512_and_si512(_mm512_srli_epi32(quads[k - 4], 4), m4));
}

// IQ4_NL: Q4_0's strip layout (tile_small_block_bytes<false>()), the codes through iq4_codes.
inline void pack_iq4_nl(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  for (int64_t b = 0; b < in / 32; ++b) {
    const uint8_t* blk = w + b * kIq4NlBytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + b * tile_small_block_bytes<false>());
    __m512i codes[8];
    iq4_codes(strip, blk + 2, codes);
    for (int k = 0; k < 8; ++k) _mm512_store_si512(packed + k, codes[k]);
    auto* scale = reinterpret_cast<float*>(packed + 8);
    for (int r = 0; r < kTileRows; ++r) scale[r] = r < rows ? half(blk + r * row_stride) : 0.0f;
  }
}

inline float* scale_block(uint8_t* ws, int64_t in, int64_t b) {
  return reinterpret_cast<float*>(ws + tile_scales_offset(in) + b * kTileScaleBlockBytes);
}

// Q4_K / Q5_K: scale group s = values 32s..32s+31 = the low (s even) or high (s odd) nibbles of
// qs[32·(s/2) + l]; Q5_K's fifth bit of value 32s + l is bit s of qh[l].
template <bool Q5>
void pack_k4(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f), one = _mm512_set1_epi32(0x01010101);
  const int64_t block_bytes = Q5 ? kQ5KBytes : kQ4KBytes;
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * block_bytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    __m512i highs[8];
    if (Q5) strip.transpose(blk + 16, highs);
    for (int j = 0; j < 4; ++j) {
      __m512i quads[8];
      strip.transpose(qs + 32 * j, quads);
      for (int k4 = 0; k4 < 8; ++k4) {
        const __m512i q = quads[k4];
        const __m512i high = Q5 ? highs[k4] : _mm512_setzero_si512();
        __m512i lo = _mm512_and_si512(q, m4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi32(q, 4), m4);
        if (Q5) {
          lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 2 * j), one), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 2 * j + 1), one), 4));
        }
        _mm512_store_si512(packed + (2 * j) * 8 + k4, lo);
        _mm512_store_si512(packed + (2 * j + 1) * 8 + k4, hi);
      }
    }
    float* dot_scale = scale_block(ws, in, b);
    float* sum_scale = dot_scale + 256;
    for (int r = 0; r < kTileRows; ++r) {
      int sc[8] = {}, mn[8] = {};
      float d = 0, dmin = 0;
      if (r < rows) {
        const uint8_t* row_blk = blk + r * row_stride;
        d = half(row_blk);
        dmin = half(row_blk + 2);
        unpack_k4_scales(row_blk + 4, sc, mn);
      }
      for (int s = 0; s < 8; ++s) {
        dot_scale[s * 16 + r] = d * static_cast<float>(sc[s]);
        sum_scale[s * 16 + r] = dmin * static_cast<float>(mn[s]);
      }
    }
  }
}

// IQ4_XS: scale group s = sub-block s (values 32s..32s+31, nibble bytes 8 + 16s..), codes as
// IQ4_NL's; the group's factors d·scale and 128·d·scale (the codes' offset times the activation sum).
inline void pack_iq4_xs(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kIq4XsBytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    for (int s = 0; s < 8; ++s) {
      __m512i codes[8];
      iq4_codes(strip, blk + 8 + 16 * s, codes);
      for (int k = 0; k < 8; ++k) _mm512_store_si512(packed + 8 * s + k, codes[k]);
    }
    float* dot_scale = scale_block(ws, in, b);
    float* sum_scale = dot_scale + 256;
    for (int r = 0; r < kTileRows; ++r) {
      const uint8_t* row_blk = blk + r * row_stride;
      const float d = r < rows ? half(row_blk) : 0.0f;
      for (int s = 0; s < 8; ++s) {
        const float f = r < rows ? d * static_cast<float>(iq4_xs_scale(row_blk, s)) : 0.0f;
        dot_scale[s * 16 + r] = f;
        sum_scale[s * 16 + r] = 128.0f * f;
      }
    }
  }
}

// Q6_K: value 128h + 32q + l = low nibble (q < 2) or high nibble (q >= 2) of ql[64h + 32·(q%2) + l],
// plus bits 2q, 2q+1 of qh[32h + l] as bits 4-5; scale group g = 16 values, int8 scale; u − 32.
inline void pack_q6k(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip{row_stride, rows};
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f), m2 = _mm512_set1_epi32(0x03030303);
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kQ6KBytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    for (int h = 0; h < 2; ++h) {
      __m512i first[8], second[8], highs[8];
      strip.transpose(blk + 64 * h, first);
      strip.transpose(blk + 64 * h + 32, second);
      strip.transpose(blk + 128 + 32 * h, highs);
      for (int k4 = 0; k4 < 8; ++k4) {
        const __m512i a = first[k4], c = second[k4], hb = highs[k4];
        const __m512i low[4] = {_mm512_and_si512(a, m4), _mm512_and_si512(c, m4),
                                _mm512_and_si512(_mm512_srli_epi32(a, 4), m4),
                                _mm512_and_si512(_mm512_srli_epi32(c, 4), m4)};
        for (int q = 0; q < 4; ++q) {
          const __m512i top = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2 * q), m2), 4);
          _mm512_store_si512(packed + 32 * h + 8 * q + k4, _mm512_or_si512(low[q], top));
        }
      }
    }
    float* dot_scale = scale_block(ws, in, b);
    float* sum_scale = dot_scale + 256;
    for (int r = 0; r < kTileRows; ++r) {
      const uint8_t* row_blk = blk + r * row_stride;
      const float d = r < rows ? half(row_blk + 208) : 0.0f;
      for (int g = 0; g < 16; ++g) {
        const float s = r < rows ? d * static_cast<float>(static_cast<int8_t>(row_blk[192 + g])) : 0.0f;
        dot_scale[g * 16 + r] = s;
        sum_scale[g * 16 + r] = 32.0f * s;
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels
