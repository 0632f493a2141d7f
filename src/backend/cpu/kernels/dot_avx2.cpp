// AVX2 + FMA + F16C kernels. Built with -mavx2 -mfma -mf16c: this file must not instantiate
// library templates or shared inline functions; intrinsics and its own internal functions only.
//
// Quantised types: one sub-block of 32 unsigned weight bytes per register, vpmaddubsw against the
// int8 activations (u8·s8 pairs to int16, no saturation for these ranges), vpmaddwd against the
// sub-block scale. Signed weights (Q8_0, IQ4_XS, IQ4_NL) go through |w| and sign(a, w).
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics as uninitialised.
#include "backend/cpu/kernels/intrinsics.hpp"

#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/small_block_dot.hpp"
#include "backend/cpu/kernels/k4_scale_bytes.hpp"
#include "backend/cpu/kernels/quant_layouts.hpp"
#include "backend/cpu/kernels/stored_elements.hpp"

namespace tandem::kernels::avx2 {
namespace {

template <class Act>
inline const Act* act_row(const void* x, int64_t stride, int t) {
  return reinterpret_cast<const Act*>(static_cast<const uint8_t*>(x) + t * stride);
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 p = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)));
}

// Q4_K / Q5_K: W[s] holds sub-block s (32 values) as unsigned bytes, S[s] its scale in every
// 16-bit lane (a byte shuffle of the unpacked scales: kScaleLane[s] puts byte s in each lane).
alignas(32) constexpr int8_t kScaleLane[8][32] = {
#define TANDEM_LANE(s)                                                                                              \
  {s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1, s, -1}
    TANDEM_LANE(0), TANDEM_LANE(1), TANDEM_LANE(2), TANDEM_LANE(3),
    TANDEM_LANE(4), TANDEM_LANE(5), TANDEM_LANE(6), TANDEM_LANE(7)};
#undef TANDEM_LANE

template <int NT, bool Q5>
void dot_k4(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m256 acc[NT], mins[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm256_setzero_ps();
    mins[t] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256i lane[8];
  for (int s = 0; s < 8; ++s) lane[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(kScaleLane[s]));
  const int64_t block_bytes = Q5 ? kQ5KBytes : kQ4KBytes;
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * block_bytes;
    uint32_t d_dmin_bits;
    std::memcpy(&d_dmin_bits, blk, 4);
    const __m128 d_dmin = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin_bits)));  // [d, dmin, 0, 0]
    const __m128i scale_bytes = k4_scale_bytes(blk + 4);
    const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scale_bytes, scale_bytes));
    // The scale bytes in both 128-bit halves, for the in-lane byte shuffles.
    const __m256i scales = _mm256_broadcastsi128_si256(scale_bytes);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    __m256i W[8], S[8];
    for (int s = 0; s < 8; ++s) S[s] = _mm256_shuffle_epi8(scales, lane[s]);
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load32(qs + 32 * c);
      W[2 * c] = _mm256_and_si256(q, m4);
      W[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    if constexpr (Q5) {
      const __m256i qh = load32(blk + 16);
      for (int s = 0; s < 8; ++s) {
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << s));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        W[s] = _mm256_or_si256(W[s], _mm256_and_si256(set, _mm256_set1_epi8(16)));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const ActQ8K& ab = a[t][b];
      __m256i sum = _mm256_setzero_si256();
      for (int s = 0; s < 8; ++s) {
        const __m256i p = _mm256_maddubs_epi16(W[s], load32(ab.q + 32 * s));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, S[s]));
      }
      const __m128 scaled = _mm_mul_ps(d_dmin, _mm_set1_ps(ab.d));  // [d·a.d, dmin·a.d]
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_broadcastss_ps(scaled), acc[t]);
      const __m256i m = _mm256_madd_epi16(load32(ab.sums), mins16);
      mins[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_broadcastss_ps(_mm_movehdup_ps(scaled)), mins[t]);
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ys] = hsum(_mm256_sub_ps(acc[t], mins[t]));
}

// Q6_K: kQ6ScalePair[s] puts byte 2s in both bytes of each 16-bit lane of the low 128 bits, byte
// 2s + 1 in the high ones.
alignas(32) constexpr int8_t kQ6ScalePair[8][32] = {
#define TANDEM_PAIR(s)                                                                                              \
  {2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s),   \
   2 * (s), 2 * (s), 2 * (s), 2 * (s), 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1,         \
   2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1,       \
   2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1}
    TANDEM_PAIR(0), TANDEM_PAIR(1), TANDEM_PAIR(2), TANDEM_PAIR(3),
    TANDEM_PAIR(4), TANDEM_PAIR(5), TANDEM_PAIR(6), TANDEM_PAIR(7)};
#undef TANDEM_PAIR

template <int NT>
void dot_q6k(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
  __m256i pair[8];
  for (int s = 0; s < 8; ++s) pair[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(kQ6ScalePair[s]));
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kQ6KBytes;
    const float d = half(blk + 208);
    const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
    __m256i W[8], S[8];
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = load32(blk + 64 * h), l1 = load32(blk + 64 * h + 32);
      const __m256i qh = load32(blk + 128 + 32 * h);
      for (int quarter = 0; quarter < 4; ++quarter) {
        const __m256i l = quarter % 2 == 0 ? l0 : l1;
        const __m256i low =
            quarter < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
        const __m256i high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * quarter)), m3);
        W[4 * h + quarter] = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
      }
    }
    // Scale 2s in every 16-bit lane of the low half, 2s + 1 of the high half: the byte twice, then an
    // arithmetic shift sign-extends it.
    const __m256i scale_bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    for (int s = 0; s < 8; ++s) S[s] = _mm256_srai_epi16(_mm256_shuffle_epi8(scale_bytes, pair[s]), 8);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    for (int t = 0; t < NT; ++t) {
      const ActQ8K& ab = a[t][b];
      __m256i sum = _mm256_setzero_si256();
      for (int s = 0; s < 8; ++s) {
        const __m256i p = _mm256_maddubs_epi16(W[s], load32(ab.q + 32 * s));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, S[s]));
      }
      const __m256i offset = _mm256_madd_epi16(sc16, load32(ab.sums));
      sum = _mm256_sub_epi32(sum, _mm256_slli_epi32(offset, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * ab.d), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
}

template <int NT>
void dot_iq4xs(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8K* a[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8K>(x, xs, t);
    acc[t] = _mm256_setzero_ps();
  }
  const __m256i lut =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kIq4XsBytes;
    const float d = half(blk);
    __m256i V[8], M[8];
    int ls[8];
    for (int s = 0; s < 8; ++s) {
      ls[s] = iq4_xs_scale(blk, s);
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 8 + 16 * s));
      const __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
      V[s] = _mm256_shuffle_epi8(lut, nib);
      M[s] = _mm256_abs_epi8(V[s]);
    }
    for (int t = 0; t < NT; ++t) {
      const ActQ8K& ab = a[t][b];
      __m256i sum = _mm256_setzero_si256();
      for (int s = 0; s < 8; ++s) {
        const __m256i p = _mm256_maddubs_epi16(M[s], _mm256_sign_epi8(load32(ab.q + 32 * s), V[s]));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, _mm256_set1_epi16(static_cast<short>(ls[s]))));
      }
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * ab.d), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
}

template <int NT>
void dot_q80(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m256 acc[2][NT];  // even and odd blocks (even_odd_blocks)
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const auto block = [&](int64_t b, __m256* sums) __attribute__((always_inline)) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    const float d = half(blk);
    const __m256i q = load32(blk + 2);
    const __m256i magnitude = _mm256_abs_epi8(q);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i p = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(load32(ab.q), q));
      const __m256i dot = _mm256_madd_epi16(p, ones);
      sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * ab.d), sums[t]);
    }
  };
  even_odd_blocks<NT>(in / 32, acc, block);
  for (int t = 0; t < NT; ++t) y[t * ys] = sum_both(acc[0][t], acc[1][t]);
}

// Q4_0 and Q5_0 (Q5: a fifth bit per value from a 32-bit mask; offset 16, not 8), and Q4_1 / Q5_1
// (Min: unsigned quants, plus the block minimum times the activation block's sum).
template <int NT, bool Q5, bool Min>
void dot_small_block(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m256 acc[2][NT];  // even and odd blocks (even_odd_blocks)
  float offset[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    offset[t] = 0;
  }
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bit_of_byte = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const auto block = [&](int64_t b, __m256* sums) __attribute__((always_inline)) {
    const uint8_t* blk = w + b * small_block_bytes<Q5, Min>();
    const float d = half(blk);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + small_block_nibble_offset<Q5, Min>()));
    __m256i W = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if constexpr (Q5) {
      int32_t high;
      std::memcpy(&high, blk + small_block_high_offset<Min>(), 4);
      // Byte i of `bits`: byte i / 8 of the mask, tested against bit i % 8, becomes 0x10 where set.
      const __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32(high), spread);
      W = _mm256_or_si256(W, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, bit_of_byte), bit_of_byte),
                                              _mm256_set1_epi8(0x10)));
    }
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i dot =
          small_block_correction<Q5, Min>(_mm256_madd_epi16(_mm256_maddubs_epi16(W, load32(ab.q)), ones), ab, blk, offset[t]);
      sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * ab.d), sums[t]);
    }
  };
  even_odd_blocks<NT>(in / 32, acc, block);
  for (int t = 0; t < NT; ++t) y[t * ys] = sum_both(acc[0][t], acc[1][t]) - offset[t];
}
template <int NT>
constexpr auto dot_q40 = dot_small_block<NT, false, false>;
template <int NT>
constexpr auto dot_q50 = dot_small_block<NT, true, false>;
template <int NT>
constexpr auto dot_q41 = dot_small_block<NT, false, true>;
template <int NT>
constexpr auto dot_q51 = dot_small_block<NT, true, true>;

// IQ4_NL: Q4_0's nibbles through the codebook by vpshufb (signed values, never 0), then
// |v| · sign(a, v) as Q8_0's.
template <int NT>
void dot_iq4nl(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const ActQ8* a[NT];
  __m256 acc[2][NT];  // even and odd blocks (even_odd_blocks)
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<ActQ8>(x, xs, t);
    acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  }
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const auto block = [&](int64_t b, __m256* sums) __attribute__((always_inline)) {
    const uint8_t* blk = w + b * kIq4NlBytes;
    const float d = half(blk);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m256i V = _mm256_shuffle_epi8(lut, _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4)));
    const __m256i magnitude = _mm256_abs_epi8(V);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t][b];
      const __m256i p = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(load32(ab.q), V));
      sums[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), _mm256_set1_ps(d * ab.d), sums[t]);
    }
  };
  even_odd_blocks<NT>(in / 32, acc, block);
  for (int t = 0; t < NT; ++t) y[t * ys] = sum_both(acc[0][t], acc[1][t]);
}

inline __m256 load_f32(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
inline __m256 load_f16(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load_bf16(const uint8_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
// E4M3 bits shifted into an f16 (value × 2^-8, exact); the caller folds 256 into the block scale.
inline __m256 load_f8(const uint8_t* p) {
  const __m128i v = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x7f)), 7),
                                 _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x80)), 8));
  return _mm256_cvtph_ps(h);
}

template <int NT, __m256 (*Load)(const uint8_t*), float (*Tail)(const uint8_t*), int Bytes>
void dot_float(const uint8_t* w, const void* x, int64_t xs, int64_t in, float* y, int64_t ys) {
  const float* a[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<float>(x, xs, t);
    acc[t] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= in; i += 8) {
    const __m256 v = Load(w + Bytes * i);
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(a[t] + i), acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    float sum = hsum(acc[t]);
    for (int64_t j = i; j < in; ++j) sum += Tail(w + Bytes * j) * a[t][j];
    y[t * ys] = sum;
  }
}

template <int NT>
void dot_f8(const uint8_t* w, const void* x, int64_t xs, int64_t in, const float* scales, float* y,
            int64_t ys) {
  const float* a[NT];
  __m256 acc[NT];
  float tail[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = act_row<float>(x, xs, t);
    acc[t] = _mm256_setzero_ps();
    tail[t] = 0;
  }
  for (int64_t c = 0; c * kFp8Block < in; ++c) {
    const int64_t begin = c * kFp8Block, end = begin + kFp8Block < in ? begin + kFp8Block : in;
    const float scale = scales[c] * 256.0f;
    __m256 part[NT];
    for (int t = 0; t < NT; ++t) part[t] = _mm256_setzero_ps();
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      const __m256 v = load_f8(w + i);
      for (int t = 0; t < NT; ++t) part[t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(a[t] + i), part[t]);
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(part[t], _mm256_set1_ps(scale), acc[t]);
      for (int64_t j = i; j < end; ++j) tail[t] += scale * tail_f8(w + j) * a[t][j];
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]) + tail[t];
}

#include "backend/cpu/kernels/dot_entries.inc"

}  // namespace

void fill_kernels(KernelTable& t) noexcept { fill_dot_entries(t); }

}  // namespace tandem::kernels::avx2
