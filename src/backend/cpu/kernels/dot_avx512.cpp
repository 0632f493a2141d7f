// AVX-512 (F/BW/VL/DQ + VNNI) kernels. Built with -mavx512* flags: this file must not instantiate
// library templates or shared inline functions (they could be linked into baseline code); it uses
// intrinsics and its own internal functions only.
//
// Quantised types: weights unpacked to unsigned bytes, products with the int8 activations by
// vpmaddubsw (u8·s8 pairs to int16, no saturation for these ranges) then vpdpwssd against the
// sub-block scales (VNNI), so a 256-value block costs two instructions per 64 values and token.
// Q4_0/Q8_0 use vpdpbusd directly; IQ4_XS's and IQ4_NL's signed table values go through |v| and the
// activation's sign.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics as uninitialised.
#include "backend/cpu/kernels/intrinsics.hpp"

#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/small_block_dot.hpp"
#include "backend/cpu/kernels/k4_scale_bytes.hpp"
#include "backend/cpu/kernels/quant_layouts.hpp"
#include "backend/cpu/kernels/stored_elements.hpp"

namespace tandem::kernels::avx512 {
namespace {

template <class Act>
inline const Act* act_row(const void* x, int64_t stride, int t) {
  return reinterpret_cast<const Act*>(static_cast<const uint8_t*>(x) + t * stride);
}

inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// Q4_K / Q5_K: W[k] holds values 64k..64k+63 (sub-blocks 2k, 2k+1) as unsigned bytes; S[k] the
// two sub-blocks' scales per 16-bit lane. The minimums: Σ_s min_s·(sum of sub-block s) with the
// activation's 16-value sums, one vpmaddwd per token.
alignas(64) constexpr int16_t kPairIndex[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}};

// A Q4_K/Q5_K block unpacked for the products: W[k] holds values 64k..64k+63 as unsigned bytes,
// S[k] their two sub-blocks' scales per 16-bit lane, mins16 each minimum twice (one per 16 values),
// d_dmin [d, dmin].
struct K4Block {
  __m512i W[4], S[4];
  __m256i mins16;
  __m128 d_dmin;
};

struct K4Constants {
  __m512i pair_index[4];
  K4Constants() {
    for (int k = 0; k < 4; ++k) pair_index[k] = _mm512_load_si512(kPairIndex[k]);
  }
};

template <bool Q5>
__attribute__((always_inline)) inline void unpack_k4(const uint8_t* blk, const K4Constants& c, K4Block& k) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  uint32_t d_dmin_bits;
  __builtin_memcpy(&d_dmin_bits, blk, 4);
  k.d_dmin = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin_bits)));
  const __m128i scale_bytes = k4_scale_bytes(blk + 4);
  const __m512i scales16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(scale_bytes));
  k.mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scale_bytes, scale_bytes));
  const uint8_t* qs = blk + (Q5 ? 48 : 16);
  #pragma GCC unroll 8
  for (int h = 0; h < 2; ++h) {
    const __m512i q = load64(qs + 64 * h);
    const __m512i lo = _mm512_and_si512(q, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    k.W[2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
    k.W[2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
  }
  if constexpr (Q5) {
    const __m512i sixteen = _mm512_set1_epi8(16);
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)));
    #pragma GCC unroll 8
    for (int k4 = 0; k4 < 4; ++k4) {
      const __m512i bit =
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(static_cast<char>(1 << (2 * k4)))),
                             _mm256_set1_epi8(static_cast<char>(1 << (2 * k4 + 1))), 1);
      k.W[k4] = _mm512_mask_add_epi8(k.W[k4], _mm512_test_epi8_mask(qh, bit), k.W[k4], sixteen);
    }
  }
  #pragma GCC unroll 8
  for (int k4 = 0; k4 < 4; ++k4) k.S[k4] = _mm512_permutexvar_epi16(c.pair_index[k4], scales16);
}

// One token's products with an unpacked block, into acc (the scaled sums) and mins (the minimums'
// terms, subtracted once at the end).
__attribute__((always_inline)) inline void accumulate_k4(const K4Block& k, const ActQ8K& ab, __m512& acc,
                                                         __m256& mins) {
  __m512i sum = _mm512_setzero_si512();
  #pragma GCC unroll 8
  for (int k4 = 0; k4 < 4; ++k4)
    sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(k.W[k4], load64(ab.q + 64 * k4)), k.S[k4]);
  const __m128 scaled = _mm_mul_ps(k.d_dmin, _mm_set1_ps(ab.d));  // [d·a.d, dmin·a.d]
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_broadcastss_ps(scaled), acc);
  const __m256i m = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.sums)), k.mins16);
  mins = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_broadcastss_ps(_mm_movehdup_ps(scaled)), mins);
}

template <int NT, bool Q5>
void dot_k4(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m512 acc[NT];
  __m256 mins[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
    mins[t] = _mm256_setzero_ps();
  }
  const K4Constants c;
  const int64_t block_bytes = Q5 ? kQ5KBytes : kQ4KBytes;
  for (int64_t b = 0; b < in / 256; ++b) {
    K4Block k;
    unpack_k4<Q5>(w + b * block_bytes, c, k);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) accumulate_k4(k, a[t][b], acc[t], mins[t]);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[t], _mm512_zextps256_ps512(mins[t])));
}

alignas(64) constexpr int16_t kQ6ScaleIndex[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8,  8,  8,  8,  8,  8,  8,  8,  9,  9,  9,  9,  9,  9,  9,  9,
     10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
     14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

// A Q6_K block unpacked for the products: W[k] values 64k..64k+63 as unsigned 6-bit bytes (offset
// 32), S[k] their 16-value groups' scales per 16-bit lane, sc16 the 16 scales, d the block scale.
struct Q6Block {
  __m512i W[4], S[4];
  __m256i sc16;
  float d;
};

struct Q6Constants {
  __m512i index[4];
  // Shift counts per 16-bit lane: the low 256 bits take one quarter's 2-bit field, the high the next.
  __m512i shift01, shift23;
  Q6Constants()
      : shift01(_mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1)),
        shift23(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(6), 1)) {
    for (int k = 0; k < 4; ++k) index[k] = _mm512_load_si512(kQ6ScaleIndex[k]);
  }
};

__attribute__((always_inline)) inline void unpack_q6k(const uint8_t* blk, const Q6Constants& c, Q6Block& k) {
  const __m512i m4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
  k.d = half(blk + 208);
  #pragma GCC unroll 8
  for (int h = 0; h < 2; ++h) {
    const __m512i l = load64(blk + 64 * h);
    const __m512i qh =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h)));
    const __m512i h01 = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, c.shift01), m3), 4);
    const __m512i h23 = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, c.shift23), m3), 4);
    k.W[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), h01);
    k.W[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), h23);
  }
  k.sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
  const __m512i scv = _mm512_castsi256_si512(k.sc16);
  #pragma GCC unroll 8
  for (int k4 = 0; k4 < 4; ++k4) k.S[k4] = _mm512_permutexvar_epi16(c.index[k4], scv);
}

__attribute__((always_inline)) inline void accumulate_q6k(const Q6Block& k, const ActQ8K& ab, __m512& acc) {
  __m512i sum = _mm512_setzero_si512();
  #pragma GCC unroll 8
  for (int k4 = 0; k4 < 4; ++k4)
    sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(k.W[k4], load64(ab.q + 64 * k4)), k.S[k4]);
  const __m256i offset = _mm256_madd_epi16(k.sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.sums)));
  sum = _mm512_sub_epi32(sum, _mm512_zextsi256_si512(_mm256_slli_epi32(offset, 5)));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(k.d * ab.d), acc);
}

template <int NT>
void dot_q6k(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m512 acc[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
  }
  const Q6Constants c;
  for (int64_t b = 0; b < in / 256; ++b) {
    Q6Block k;
    unpack_q6k(w + b * kQ6KBytes, c, k);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) accumulate_q6k(k, a[t][b], acc[t]);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = _mm512_reduce_add_ps(acc[t]);
}

// IQ4 codes to their signed codebook values: 32 bytes of nibble pairs (two 16-byte halves) become
// 64 values in block order, each half's low nibbles then its high ones:
// [low of half 0 | high of half 0 | low of half 1 | high of half 1].
inline __m512i iq4_codebook_values(__m256i q, __m512i lut, __m256i m4) {
  const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                                       _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), 1);
  return _mm512_shuffle_epi8(lut, _mm512_shuffle_i64x2(z, z, 0xD8));
}

// IQ4_XS: table values through vpshufb, then |v| · (a with v's sign) by vpmaddubsw (|v|, |a| <= 127:
// no saturation) and vpdpwssd against the two sub-blocks' scales.
template <int NT>
void dot_iq4xs(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m512 acc[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
  }
  const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kIq4XsBytes;
    const float d = half(blk);
    __m512i M[4], S[4];
    __mmask64 negative[4];
    #pragma GCC unroll 8
    for (int k = 0; k < 4; ++k) {
      const __m512i v = iq4_codebook_values(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 8 + 32 * k)), lut, m4);
      M[k] = _mm512_abs_epi8(v);
      negative[k] = _mm512_movepi8_mask(v);
      S[k] = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_set1_epi16(static_cast<short>(iq4_xs_scale(blk, 2 * k)))),
          _mm256_set1_epi16(static_cast<short>(iq4_xs_scale(blk, 2 * k + 1))), 1);
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const ActQ8K& ab = a[t][b];
      __m512i sum = _mm512_setzero_si512();
      #pragma GCC unroll 8
      for (int k = 0; k < 4; ++k) {
        const __m512i act = load64(ab.q + 64 * k);
        const __m512i signed_act = _mm512_mask_sub_epi8(act, negative[k], zero, act);
        sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(M[k], signed_act), S[k]);
      }
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d * ab.d), acc[t]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = _mm512_reduce_add_ps(acc[t]);
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

template <int NT>
void dot_q80(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m256 acc[2][NT];  // even and odd blocks (even_odd_blocks)
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  }
  const auto block = [&](int64_t b, __m256* sums) __attribute__((always_inline)) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    const float d = half(blk);
    const __m256i q = load32(blk + 2);
    const __m256i magnitude = _mm256_abs_epi8(q);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i signed_act = _mm256_sign_epi8(load32(ab.q), q);
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_act);
      sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * ab.d), sums[t]);
    }
  };
  even_odd_blocks<NT>(in / 32, acc, block);
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    y[t * ys] = sum_both(acc[0][t], acc[1][t]);
  }
}

// Q4_0 and Q5_0 (Q5: a fifth bit per value from a 32-bit mask; offset 16, not 8), and Q4_1 / Q5_1
// (Min: unsigned quants, plus the block minimum times the activation block's sum).
template <int NT, bool Q5, bool Min>
void dot_small_block(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m256 acc[2][NT];  // even and odd blocks (even_odd_blocks)
  float offset[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    offset[t] = 0;
  }
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const auto block = [&](int64_t b, __m256* sums) __attribute__((always_inline)) {
    const uint8_t* blk = w + b * small_block_bytes<Q5, Min>();
    const float d = half(blk);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + small_block_nibble_offset<Q5, Min>()));
    __m256i W = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if constexpr (Q5) {
      uint32_t high;
      std::memcpy(&high, blk + small_block_high_offset<Min>(), 4);
      W = _mm256_or_si256(W, _mm256_maskz_set1_epi8(high, 0x10));  // byte i: value i's fifth bit
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i dot =
          small_block_correction<Q5, Min>(_mm256_dpbusd_epi32(_mm256_setzero_si256(), W, load32(ab.q)), ab, blk, offset[t]);
      sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * ab.d), sums[t]);
    }
  };
  even_odd_blocks<NT>(in / 32, acc, block);
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    y[t * ys] = sum_both(acc[0][t], acc[1][t]) - offset[t];
  }
}
template <int NT>
constexpr auto dot_q40 = dot_small_block<NT, false, false>;
template <int NT>
constexpr auto dot_q50 = dot_small_block<NT, true, false>;
template <int NT>
constexpr auto dot_q41 = dot_small_block<NT, false, true>;
template <int NT>
constexpr auto dot_q51 = dot_small_block<NT, true, true>;

// IQ4_NL: Q4_0's nibbles through the codebook by vpshufb (signed values, never 0), then |v| times
// (a with v's sign) by vpdpbusd (|v|, |a| <= 127): no offset, so no activation sum. Two blocks per
// zmm (block b in the low half, b + 1 in the high), each half with its own d · a.d; an odd last block
// in a ymm.
template <int NT>
void dot_iq4nl(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m512 acc[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
  }
  const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m512i zero = _mm512_setzero_si512();
  const int64_t blocks = in / 32;
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const uint8_t* blk = w + b * kIq4NlBytes;
    const float d0 = half(blk), d1 = half(blk + kIq4NlBytes);
    const __m256i q = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kIq4NlBytes + 2)), 1);
    const __m512i v = iq4_codebook_values(q, lut, m4);  // [low b | high b | low b + 1 | high b + 1]
    const __m512i magnitude = _mm512_abs_epi8(v);
    const __mmask64 negative = _mm512_movepi8_mask(v);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const ActQ8* ab = a[t] + b;
      const __m512i act = _mm512_inserti64x4(_mm512_castsi256_si512(load32(ab[0].q)), load32(ab[1].q), 1);
      const __m512i dot = _mm512_dpbusd_epi32(zero, magnitude, _mm512_mask_sub_epi8(act, negative, zero, act));
      const __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(d0 * ab[0].d), _mm256_set1_ps(d1 * ab[1].d), 1);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[t]);
    }
  }
  __m256 last[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) last[t] = _mm256_setzero_ps();
  if (b < blocks) {
    const uint8_t* blk = w + b * kIq4NlBytes;
    const float d = half(blk);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i m4x = _mm256_castsi256_si128(m4);
    const __m256i v = _mm256_shuffle_epi8(
        _mm512_castsi512_si256(lut),
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4x), _mm_and_si128(q, m4x)));
    const __m256i magnitude = _mm256_abs_epi8(v);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, _mm256_sign_epi8(load32(ab.q), v));
      last[t] = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * ab.d));
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], _mm512_zextps256_ps512(last[t])));
}

// Float weights: 16 values to float32 per step, FMA against float32 activations.
inline __m512 load_f32(const uint8_t* p) { return _mm512_loadu_ps(p); }
inline __m512 load_f16(const uint8_t* p) { return _mm512_cvtph_ps(load32(p)); }
inline __m512 load_bf16(const uint8_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load32(p)), 16));
}
// E4M3 -> the f16 with the same bits shifted into place (exponent bias 15 instead of 7), i.e. the
// value times 2^-8, exact for normals and subnormals; the caller multiplies 256 back into the
// block scale. (0x7f, E4M3's NaN, reads as 480: weights never hold NaN.)
inline __m512 load_f8(const uint8_t* p) {
  const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7f)), 7),
                                    _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x80)), 8));
  return _mm512_cvtph_ps(h);
}

template <int NT, __m512 (*Load)(const uint8_t*), float (*Tail)(const uint8_t*), int Bytes>
void dot_float(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const float* a[NT];
  __m512 acc[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<float>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    const __m512 v = Load(w + Bytes * i);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(v, _mm512_loadu_ps(a[t] + i), acc[t]);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    float sum = _mm512_reduce_add_ps(acc[t]);
    for (int64_t j = i; j < in; ++j) sum += Tail(w + Bytes * j) * a[t][j];
    y[t * ys] = sum;
  }
}

template <int NT>
void dot_f8(const uint8_t* w, const void* x, int64_t xs, int64_t in, const float* scales, float* y,
            int64_t ys) {
  const float* a[NT];
  __m512 acc[NT];
  float tail[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<float>(x, xs, t);
    acc[t] = _mm512_setzero_ps();
    tail[t] = 0;
  }
  for (int64_t c = 0; c * kFp8Block < in; ++c) {
    const int64_t begin = c * kFp8Block, end = begin + kFp8Block < in ? begin + kFp8Block : in;
    const float scale = scales[c] * 256.0f;
    __m512 part[NT];
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) part[t] = _mm512_setzero_ps();
    int64_t i = begin;
    for (; i + 16 <= end; i += 16) {
      const __m512 v = load_f8(w + i);
      #pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) part[t] = _mm512_fmadd_ps(v, _mm512_loadu_ps(a[t] + i), part[t]);
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm512_fmadd_ps(part[t], _mm512_set1_ps(scale), acc[t]);
      for (int64_t j = i; j < end; ++j) tail[t] += scale * tail_f8(w + j) * a[t][j];
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) y[t * ys] = _mm512_reduce_add_ps(acc[t]) + tail[t];
}

#include "backend/cpu/kernels/dot_entries.inc"

}  // namespace

void fill_kernels(KernelTable& t) noexcept { fill_dot_entries(t); }

}  // namespace tandem::kernels::avx512
