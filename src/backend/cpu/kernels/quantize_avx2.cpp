// Activation quantisation (activation_blocks.hpp) in AVX2: the scalar definitions' results bit for
// bit (the same max and float product; _mm256_cvtps_epi32 rounds half to even as std::nearbyint
// does in the default rounding mode). Built with the AVX2 flags.
#include "backend/cpu/kernels/intrinsics.hpp"

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"

namespace tandem::kernels::avx2 {
namespace {

inline __m256 absolute(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

inline float abs_max(const __m256* v, int count) {
  __m256 m = absolute(v[0]);
  for (int i = 1; i < count; ++i) m = _mm256_max_ps(m, absolute(v[i]));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

inline int horizontal_sum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// 16 values (two vectors) × inverse scale → int8 codes in [-127, 127] at `q`; returns their sum.
inline int codes16(__m256 lo, __m256 hi, __m256 inverse, int8_t* q) {
  const __m256i low = _mm256_set1_epi32(-127), high = _mm256_set1_epi32(127);
  const __m256i a =
      _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(lo, inverse)), low), high);
  const __m256i b =
      _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(hi, inverse)), low), high);
  // packs works within 128-bit lanes: a0-3 b0-3 | a4-7 b4-7 as int16, put back in order.
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
  const __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), bytes);
  return horizontal_sum(_mm256_add_epi32(a, b));
}

void quantize_q8k(const float* x, int64_t n, ActQ8K* out) noexcept {
  for (int64_t b = 0; b < n / 256; ++b) {
    __m256 v[32];
    for (int i = 0; i < 32; ++i) v[i] = _mm256_loadu_ps(x + b * 256 + 8 * i);
    const float amax = abs_max(v, 32);
    ActQ8K& blk = out[b];
    blk.d = amax / 127.0f;
    const __m256 inverse = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    for (int g = 0; g < 16; ++g)
      blk.sums[g] = static_cast<int16_t>(codes16(v[2 * g], v[2 * g + 1], inverse, blk.q + 16 * g));
  }
}

void quantize_q8(const float* x, int64_t n, ActQ8* out) noexcept {
  for (int64_t b = 0; b < n / 32; ++b) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + b * 32 + 8 * i);
    const float amax = abs_max(v, 4);
    ActQ8& blk = out[b];
    blk.d = amax / 127.0f;
    const __m256 inverse = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    blk.sum = codes16(v[0], v[1], inverse, blk.q) + codes16(v[2], v[3], inverse, blk.q + 16);
  }
}

}  // namespace

void fill_quantize_kernels(KernelTable& t) noexcept {
  t.quantize_q8k = quantize_q8k;
  t.quantize_q8 = quantize_q8;
}

}  // namespace tandem::kernels::avx2
