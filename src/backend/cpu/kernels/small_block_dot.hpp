#pragma once
// What the 32-value block types' dot kernels (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1) share across ISAs: the block
// loop and the offset/minimum correction, for the files built with -mavx2 or -mavx512*. Internal
// linkage on purpose, as quant_layouts.hpp: each ISA's file compiles its own copy.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"

namespace tandem::kernels {
namespace {

// The 32-value block types' loop: blocks into two accumulators per token, even and odd, since one
// chain's FMA latency would bound a block per 4 cycles; `block(b, sums)` adds block b into sums[t].
template <int NT, class Block>
__attribute__((always_inline)) inline void even_odd_blocks(int64_t blocks, __m256 (&acc)[2][NT], const Block& block) {
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    block(b, acc[0]);
    block(b + 1, acc[1]);
  }
  if (b < blocks) block(b, acc[0]);
}
inline float sum_both(__m256 even, __m256 odd) {
  const __m256 v = _mm256_add_ps(even, odd);
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  return _mm_cvtss_f32(_mm_hadd_ps(_mm_hadd_ps(s, s), s));
}


// A 32-value block's correction: Q4_0/Q5_0's unsigned quants' offset (8, 16) times the activation
// block's sum, taken off the integer lanes (exact); Q4_1/Q5_1's minimum times it, into `offset`
// (subtracted from the row's sum at the end). `blk`: the weight block (f16 d, then f16 minimum).
template <bool Q5, bool Min>
__attribute__((always_inline)) inline __m256i small_block_correction(__m256i dot, const ActQ8& ab, const uint8_t* blk,
                                                                    float& offset) {
  if constexpr (Min) {
    uint16_t m;
    std::memcpy(&m, blk + 2, 2);
    offset -= _cvtsh_ss(m) * ab.d * static_cast<float>(ab.sum);
    return dot;
  } else {
    return _mm256_sub_epi32(dot, _mm256_zextsi128_si256(_mm_cvtsi32_si128((Q5 ? 16 : 8) * ab.sum)));
  }
}

}  // namespace
}  // namespace tandem::kernels
