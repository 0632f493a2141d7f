// AVX-512 VNNI tile kernels for prefill (Q4_K, Q5_K, Q6_K, IQ4_XS, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL at
// >= kTileMinTokens tokens): a strip of 16 weight rows packed once (tile_pack.hpp: [value / 4][row][4] unsigned bytes), then per 4 tokens one
// vpdpbusd per 4 values feeds all 16 rows (the packed weights against the token's 4 int8 activations,
// broadcast), so the weight unpacking is paid once per strip instead of once per 4 tokens and each
// instruction does 64 multiply-adds. Per scale group, the int32 sums are scaled in float as in
// tile_amx.cpp. Built with the AVX-512 flags; intrinsics and internal functions only.
#include "backend/cpu/kernels/intrinsics.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "backend/cpu/kernels/tile_layout.hpp"
#include "backend/cpu/kernels/tile_pack.hpp"

namespace tandem::kernels::avx512 {
namespace {

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int N>
struct Tokens {
  static constexpr int value = N;
};

// run(Tokens<4>{}, t) for t = 0, 4, ... while 4 tokens are left, then run(Tokens<rest>{}, t) once.
template <class Run>
void token_runs(int64_t tokens, Run&& run) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) run(Tokens<4>{}, t);
  switch (tokens - t) {
    case 3:
      run(Tokens<3>{}, t);
      break;
    case 2:
      run(Tokens<2>{}, t);
      break;
    case 1:
      run(Tokens<1>{}, t);
      break;
    default:
      break;
  }
}

// NT tokens (rows x0, x0 + xs, ...) against the packed strip; G scale groups per 256-value block.
template <int G, int NT>
void strip_tokens(const uint8_t* ws, int64_t in, const uint8_t* x0, int64_t xs, float* y, int64_t ys,
                  __mmask16 row_mask) {
  constexpr int kGroup = 256 / G, kSteps = kGroup / 4;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in / 256; ++b) {
    const auto* packed = reinterpret_cast<const __m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    const auto* dot_scale = reinterpret_cast<const float*>(ws + tile_scales_offset(in) + b * kTileScaleBlockBytes);
    const float* sum_scale = dot_scale + 256;
    const ActQ8K* ab[NT];
    __m512 blk[NT];
    // Each token's 8 group sums (pairs of the block's 16-value sums) as floats, once a block: the
    // minimums' products then take them as broadcast memory operands.
    alignas(32) float group_sums[NT][8];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      ab[t] = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
      blk[t] = _mm512_setzero_ps();
      const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab[t]->sums));
      _mm256_store_ps(group_sums[t], _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, _mm256_set1_epi16(1))));
    }
    for (int g = 0; g < G; ++g) {
      __m512i dot[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) dot[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int k = 0; k < kSteps; ++k) {
        const __m512i wv = _mm512_load_si512(packed + g * kSteps + k);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t)
          dot[t] = _mm512_dpbusd_epi32(dot[t], wv, broadcast4(ab[t]->q + g * kGroup + 4 * k));
      }
      const __m512 ds = _mm512_load_ps(dot_scale + g * 16), ss = _mm512_load_ps(sum_scale + g * 16);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const int group_sum = G == 8 ? ab[t]->sums[2 * g] + ab[t]->sums[2 * g + 1] : ab[t]->sums[g];
        blk[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), ds, blk[t]);
        blk[t] = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(group_sum)), ss, blk[t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(blk[t], _mm512_set1_ps(ab[t]->d), acc[t]);
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, acc[t]);
}

template <int G>
void strip(const uint8_t* ws, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in, float* y,
           int64_t ys) {
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  token_runs(tokens, [&](auto n, int64_t t) {
    strip_tokens<G, decltype(n)::value>(ws, in, x0 + t * xs, xs, y + t * ys, ys, row_mask);
  });
}

// Strips of the 32-value block types (pack_q8_0, pack_small) against ActQ8 rows: per block, 8
// vpdpbusd for all 16 rows, then (sum − offset · activation sum) · row scale · activation scale, plus
// (Min) the row minimum · activation scale · activation sum.
template <int NT, bool Min>
void strip_tokens_q8(const uint8_t* ws, int64_t in, const uint8_t* x0, int64_t xs, float* y, int64_t ys,
                     __mmask16 row_mask, float offset) {
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in / 32; ++b) {
    const auto* packed = reinterpret_cast<const __m512i*>(ws + b * tile_small_block_bytes<Min>());
    const __m512 scale = _mm512_load_ps(reinterpret_cast<const float*>(packed + 8));
    const ActQ8* ab[NT];
    __m512i dot[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      ab[t] = reinterpret_cast<const ActQ8*>(x0 + t * xs) + b;
      dot[t] = _mm512_setzero_si512();
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const __m512i wv = _mm512_load_si512(packed + k);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) dot[t] = _mm512_dpbusd_epi32(dot[t], wv, broadcast4(ab[t]->q + 4 * k));
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512 sums = _mm512_sub_ps(_mm512_cvtepi32_ps(dot[t]),
                                        _mm512_set1_ps(offset * static_cast<float>(ab[t]->sum)));
      acc[t] = _mm512_fmadd_ps(sums, _mm512_mul_ps(scale, _mm512_set1_ps(ab[t]->d)), acc[t]);
      if constexpr (Min)
        acc[t] = _mm512_fmadd_ps(_mm512_load_ps(reinterpret_cast<const float*>(packed + 9)),
                                 _mm512_set1_ps(ab[t]->d * static_cast<float>(ab[t]->sum)), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, acc[t]);
}

template <bool Min>
void strip_q8(const uint8_t* ws, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in, float* y,
              int64_t ys, float offset) {
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  token_runs(tokens, [&](auto n, int64_t t) {
    strip_tokens_q8<decltype(n)::value, Min>(ws, in, x0 + t * xs, xs, y + t * ys, ys, row_mask, offset);
  });
}

template <WeightKind Kind>
void tile_kernel(const uint8_t* w, int64_t row_stride, int rows, const void* x, int64_t x_stride, int64_t tokens,
                 int64_t in, float* y, int64_t y_stride, uint8_t* workspace) {
  if (rows <= 0 || tokens <= 0) return;
  if constexpr (Kind == WeightKind::q8_0) {
    pack_q8_0(w, row_stride, rows, in, workspace);
    strip_q8<false>(workspace, rows, x, x_stride, tokens, in, y, y_stride, 128.0f);
  } else if constexpr (Kind == WeightKind::q4_0 || Kind == WeightKind::q5_0 || Kind == WeightKind::q4_1 ||
                       Kind == WeightKind::q5_1) {
    constexpr bool kQ5 = Kind == WeightKind::q5_0 || Kind == WeightKind::q5_1;
    constexpr bool kMin = Kind == WeightKind::q4_1 || Kind == WeightKind::q5_1;
    pack_small<kQ5, kMin>(w, row_stride, rows, in, workspace);
    strip_q8<kMin>(workspace, rows, x, x_stride, tokens, in, y, y_stride, kMin ? 0.0f : kQ5 ? 16.0f : 8.0f);
  } else if constexpr (Kind == WeightKind::iq4_nl) {
    pack_iq4_nl(w, row_stride, rows, in, workspace);
    strip_q8<false>(workspace, rows, x, x_stride, tokens, in, y, y_stride, 128.0f);
  } else if constexpr (Kind == WeightKind::iq4_xs) {
    pack_iq4_xs(w, row_stride, rows, in, workspace);
    strip<8>(workspace, rows, x, x_stride, tokens, in, y, y_stride);
  } else if constexpr (Kind == WeightKind::q6_k) {
    pack_q6k(w, row_stride, rows, in, workspace);
    strip<16>(workspace, rows, x, x_stride, tokens, in, y, y_stride);
  } else {
    pack_k4<Kind == WeightKind::q5_k>(w, row_stride, rows, in, workspace);
    strip<8>(workspace, rows, x, x_stride, tokens, in, y, y_stride);
  }
}

// Asks for a repacked block's bytes `prefetch_bytes` past it into L2, as matmul_tile does for the dot
// kernels' rows (0: not at all).
inline void prefetch_block(const uint8_t* block, int64_t block_bytes, int64_t prefetch_bytes) {
  if (prefetch_bytes > 0)
    for (int64_t line = 0; line < block_bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(block + prefetch_bytes + line), _MM_HINT_T1);
}

// The unsigned 6-bit codes of groups 4j..4j + 3 at 4-value step k of a repacked Q6_K block
// (strip_repack.hpp): each from one nibble vector and the high-bit vector by a mask, a shift and an or.
inline void q6_codes(const __m512i* low, const __m512i* high, int j, int k, __m512i codes[4]) {
  const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
  const __m512i l0 = _mm512_load_si512(low + 8 * j + 2 * k), l1 = _mm512_load_si512(low + 8 * j + 2 * k + 1);
  const __m512i h = _mm512_load_si512(high + 4 * j + k);
  codes[0] = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
  codes[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
  codes[2] = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(h, m30));
  codes[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
}

// NT tokens against a Q4_K strip repacked at preparation (strip_repack.hpp): the quant bytes are
// read as stored, split into their low (group 2j) and high (group 2j + 1) nibbles in registers, and
// each group's float factors formed from the rows' d/dmin and byte scales — the same products, in
// the same order, as strip_tokens<8> on a strip pack_k4 gathered, so the results are its bits.
template <int NT>
void repacked_q4k_tokens(const uint8_t* strip, int64_t in, const uint8_t* x0, int64_t xs, float* y, int64_t ys,
                         __mmask16 row_mask, int64_t prefetch_bytes) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blkp = strip + b * kRepackedQ4KBlockBytes;
    prefetch_block(blkp, kRepackedQ4KBlockBytes, prefetch_bytes);
    const auto* quants = reinterpret_cast<const __m512i*>(blkp);
    const __m512 d = _mm512_load_ps(blkp + kRepackedQ4KD), dmin = _mm512_load_ps(blkp + kRepackedQ4KDmin);
    const ActQ8K* ab[NT];
    __m512 blk[NT];
    // Each token's 8 group sums (pairs of the block's 16-value sums) as floats, once a block: the
    // minimums' products then take them as broadcast memory operands.
    alignas(32) float group_sums[NT][8];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      ab[t] = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
      blk[t] = _mm512_setzero_ps();
      const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab[t]->sums));
      _mm256_store_ps(group_sums[t], _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, _mm256_set1_epi16(1))));
    }
    for (int j = 0; j < 4; ++j) {
      __m512i low[NT], high[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) low[t] = high[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        const __m512i q = _mm512_load_si512(quants + 8 * j + k);
        const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          low[t] = _mm512_dpbusd_epi32(low[t], lo, broadcast4(ab[t]->q + 64 * j + 4 * k));
          high[t] = _mm512_dpbusd_epi32(high[t], hi, broadcast4(ab[t]->q + 64 * j + 32 + 4 * k));
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const int g = 2 * j + h;
        const auto bytes = [&](int64_t offset) {
          return _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blkp + offset + 16 * g))));
        };
        const __m512 ds = _mm512_mul_ps(d, bytes(kRepackedQ4KScales)), ss = _mm512_mul_ps(dmin, bytes(kRepackedQ4KMins));
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          blk[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(h == 0 ? low[t] : high[t]), ds, blk[t]);
          blk[t] = _mm512_fnmadd_ps(_mm512_set1_ps(group_sums[t][g]), ss, blk[t]);
        }
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(blk[t], _mm512_set1_ps(ab[t]->d), acc[t]);
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, acc[t]);
}

// Only the first pass over the strip asks for its bytes: later passes find them in cache.
void repacked_q4k(const uint8_t* strip, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in, float* y,
                  int64_t ys, int64_t prefetch_bytes) {
  if (rows <= 0 || tokens <= 0) return;
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  token_runs(tokens, [&](auto n, int64_t t) {
    repacked_q4k_tokens<decltype(n)::value>(strip, in, x0 + t * xs, xs, y + t * ys, ys, row_mask,
                                            t == 0 ? prefetch_bytes : 0);
  });
}

// Tokens against a Q6_K strip repacked at preparation (strip_repack.hpp), in runs of kQ6Run: per
// block and four groups, two nibble vectors and one high-bit vector a 4-value step give the four
// groups' unsigned codes (a mask, a shift and an or each), formed once for the whole run and kept in
// registers while each token of the run takes one vpdpbusd per group and step; then per group the
// same float steps, in the same order, as strip_tokens<16> on a strip pack_q6k gathered — its bits.
// The run's per-block sums and totals live on the stack (the codes take half the registers).
constexpr int kQ6Run = 32;

void repacked_q6k_run(const uint8_t* strip, int64_t in, const uint8_t* x0, int64_t xs, int n, float* y, int64_t ys,
                      __mmask16 row_mask, int64_t prefetch_bytes) {
  const __m512 k32 = _mm512_set1_ps(32.0f);
  alignas(64) float acc[kQ6Run][16], blk[kQ6Run][16], group_sums[kQ6Run][16];
  for (int t = 0; t < n; ++t) _mm512_store_ps(acc[t], _mm512_setzero_ps());
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blkp = strip + b * kRepackedQ6KBlockBytes;
    prefetch_block(blkp, kRepackedQ6KBlockBytes, prefetch_bytes);
    const auto* low = reinterpret_cast<const __m512i*>(blkp);
    const auto* high = reinterpret_cast<const __m512i*>(blkp + kRepackedQ6KHigh);
    const __m512 d = _mm512_load_ps(blkp + kRepackedQ6KD);
    for (int t = 0; t < n; ++t) {
      const auto* ab = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
      _mm512_store_ps(blk[t], _mm512_setzero_ps());
      _mm512_store_ps(group_sums[t], _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(
                                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab->sums)))));
    }
    for (int j = 0; j < 4; ++j) {
      __m512i codes[4][4];  // [step][group]
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) q6_codes(low, high, j, k, codes[k]);
      __m512 ds[4], ss[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        ds[q] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(
                                     reinterpret_cast<const __m128i*>(blkp + kRepackedQ6KScales + 16 * (4 * j + q))))));
        ss[q] = _mm512_mul_ps(ds[q], k32);
      }
      for (int t = 0; t < n; ++t) {
        const int8_t* aq = (reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b)->q + 64 * j;
        __m512i dot[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) dot[q] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k)
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) dot[q] = _mm512_dpbusd_epi32(dot[q], codes[k][q], broadcast4(aq + 16 * q + 4 * k));
        __m512 sum = _mm512_load_ps(blk[t]);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[q]), ds[q], sum);
          sum = _mm512_fnmadd_ps(_mm512_set1_ps(group_sums[t][4 * j + q]), ss[q], sum);
        }
        _mm512_store_ps(blk[t], sum);
      }
    }
    for (int t = 0; t < n; ++t) {
      const float act_d = (reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b)->d;
      _mm512_store_ps(acc[t], _mm512_fmadd_ps(_mm512_load_ps(blk[t]), _mm512_set1_ps(act_d), _mm512_load_ps(acc[t])));
    }
  }
  for (int t = 0; t < n; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, _mm512_load_ps(acc[t]));
}

// 1-3 tokens against a repacked Q6_K strip (decode): the same steps as repacked_q6k_run with the
// sums in registers, each group's codes formed as its four steps are taken.
template <int NT>
void repacked_q6k_tokens(const uint8_t* strip, int64_t in, const uint8_t* x0, int64_t xs, float* y, int64_t ys,
                         __mmask16 row_mask, int64_t prefetch_bytes) {
  const __m512 k32 = _mm512_set1_ps(32.0f);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blkp = strip + b * kRepackedQ6KBlockBytes;
    prefetch_block(blkp, kRepackedQ6KBlockBytes, prefetch_bytes);
    const auto* low = reinterpret_cast<const __m512i*>(blkp);
    const auto* high = reinterpret_cast<const __m512i*>(blkp + kRepackedQ6KHigh);
    const __m512 d = _mm512_load_ps(blkp + kRepackedQ6KD);
    const ActQ8K* ab[NT];
    __m512 blk[NT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      ab[t] = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
      blk[t] = _mm512_setzero_ps();
    }
    for (int j = 0; j < 4; ++j) {
      __m512i dot[NT][4];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
        for (int q = 0; q < 4; ++q) dot[t][q] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        __m512i codes[4];
        q6_codes(low, high, j, k, codes);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q)
            dot[t][q] = _mm512_dpbusd_epi32(dot[t][q], codes[q], broadcast4(ab[t]->q + 64 * j + 16 * q + 4 * k));
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const int g = 4 * j + q;
        const __m512 ds = _mm512_mul_ps(
            d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                   _mm_load_si128(reinterpret_cast<const __m128i*>(blkp + kRepackedQ6KScales + 16 * g)))));
        const __m512 ss = _mm512_mul_ps(ds, k32);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          blk[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][q]), ds, blk[t]);
          blk[t] = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(ab[t]->sums[g])), ss, blk[t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(blk[t], _mm512_set1_ps(ab[t]->d), acc[t]);
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, acc[t]);
}

// Only the first run over the strip asks for its bytes: later runs find them in cache.
void repacked_q6k(const uint8_t* strip, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in, float* y,
                  int64_t ys, int64_t prefetch_bytes) {
  if (rows <= 0 || tokens <= 0) return;
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  switch (tokens) {  // decode: per-token registers beat the run's stack for so few
    case 1:
      return repacked_q6k_tokens<1>(strip, in, x0, xs, y, ys, row_mask, prefetch_bytes);
    case 2:
      return repacked_q6k_tokens<2>(strip, in, x0, xs, y, ys, row_mask, prefetch_bytes);
    case 3:
      return repacked_q6k_tokens<3>(strip, in, x0, xs, y, ys, row_mask, prefetch_bytes);
    default:
      break;
  }
  for (int64_t t = 0; t < tokens; t += kQ6Run)
    repacked_q6k_run(strip, in, x0 + t * xs, xs, static_cast<int>(std::min<int64_t>(kQ6Run, tokens - t)), y + t * ys,
                     ys, row_mask, t == 0 ? prefetch_bytes : 0);
}

}  // namespace

void fill_tile_kernels(KernelTable& t) noexcept {
  t.repacked[static_cast<int>(WeightKind::q4_k)] = repacked_q4k;
  t.repacked[static_cast<int>(WeightKind::q6_k)] = repacked_q6k;
  t.tile[static_cast<int>(WeightKind::q4_k)] = tile_kernel<WeightKind::q4_k>;
  t.tile[static_cast<int>(WeightKind::q5_k)] = tile_kernel<WeightKind::q5_k>;
  t.tile[static_cast<int>(WeightKind::q6_k)] = tile_kernel<WeightKind::q6_k>;
  t.tile[static_cast<int>(WeightKind::q8_0)] = tile_kernel<WeightKind::q8_0>;
  t.tile[static_cast<int>(WeightKind::q5_0)] = tile_kernel<WeightKind::q5_0>;
  t.tile[static_cast<int>(WeightKind::q4_0)] = tile_kernel<WeightKind::q4_0>;
  t.tile[static_cast<int>(WeightKind::q4_1)] = tile_kernel<WeightKind::q4_1>;
  t.tile[static_cast<int>(WeightKind::q5_1)] = tile_kernel<WeightKind::q5_1>;
  t.tile[static_cast<int>(WeightKind::iq4_nl)] = tile_kernel<WeightKind::iq4_nl>;
  t.tile[static_cast<int>(WeightKind::iq4_xs)] = tile_kernel<WeightKind::iq4_xs>;
}

}  // namespace tandem::kernels::avx512
