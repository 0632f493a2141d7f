// Activation quantisation (activation_blocks.hpp) in AVX-512: the scalar definitions' results bit
// for bit — the same max, the same float product, and _mm512_cvtps_epi32 rounds half to even as
// std::nearbyint does in the default rounding mode. Built with the AVX-512 flags.
#include "backend/cpu/kernels/intrinsics.hpp"

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"

namespace tandem::kernels::avx512 {
namespace {

// 16 values × inverse scale → int8 codes in [-127, 127] at `q`; returns their sum.
inline int codes16(__m512 v, __m512 inverse, int8_t* q) {
  __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
  c = _mm512_min_epi32(_mm512_max_epi32(c, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(c));
  return _mm512_reduce_add_epi32(c);
}

inline float abs_max(const __m512* v, int count) {
  __m512 m = _mm512_abs_ps(v[0]);
  for (int i = 1; i < count; ++i) m = _mm512_max_ps(m, _mm512_abs_ps(v[i]));
  return _mm512_reduce_max_ps(m);
}

void quantize_q8k(const float* x, int64_t n, ActQ8K* out) noexcept {
  for (int64_t b = 0; b < n / 256; ++b) {
    __m512 v[16];
    for (int g = 0; g < 16; ++g) v[g] = _mm512_loadu_ps(x + b * 256 + 16 * g);
    const float amax = abs_max(v, 16);
    ActQ8K& blk = out[b];
    blk.d = amax / 127.0f;
    const __m512 inverse = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    for (int g = 0; g < 16; ++g) blk.sums[g] = static_cast<int16_t>(codes16(v[g], inverse, blk.q + 16 * g));
  }
}

void quantize_q8(const float* x, int64_t n, ActQ8* out) noexcept {
  for (int64_t b = 0; b < n / 32; ++b) {
    const __m512 v[2] = {_mm512_loadu_ps(x + b * 32), _mm512_loadu_ps(x + b * 32 + 16)};
    const float amax = abs_max(v, 2);
    ActQ8& blk = out[b];
    blk.d = amax / 127.0f;
    const __m512 inverse = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    blk.sum = codes16(v[0], inverse, blk.q) + codes16(v[1], inverse, blk.q + 16);
  }
}

}  // namespace

void fill_quantize_kernels(KernelTable& t) noexcept {
  t.quantize_q8k = quantize_q8k;
  t.quantize_q8 = quantize_q8;
}

}  // namespace tandem::kernels::avx512
