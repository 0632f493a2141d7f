// SiLU-GLU of the fast MoE and MLP (KernelTable::silu_mul) in AVX-512: out = g / (1 + e^-g) · u with
// e^x from a polynomial (relative error ~2e-7 against std::exp; the scalar definition in
// dot_scalar.cpp is the reference the tests compare with). Built with the AVX-512 flags; like the
// other ISA files it must not instantiate library templates or shared inline functions.
#include "backend/cpu/kernels/intrinsics.hpp"

#include "backend/cpu/kernels/dot_kernels.hpp"

namespace tandem::kernels::avx512 {
namespace {

// e^x for x in [-87, 88] (clamped there: below, ~2^-126 rather than a denormal; above, ~2^127 —
// SiLU's quotient is the same to float precision either way): x = n·ln2 + r, |r| ≤ ln2/2, e^r by
// its degree-6 Taylor polynomial, 2^n in the exponent bits.
inline __m512 exp_clamped(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 = 0.693359375 − 2.12194440e-4, in two parts (Cody-Waite)
  const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f),
                                   _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);  // p · 2^n
}

inline __m512 silu_times(__m512 g, __m512 u) {
  const __m512 e = exp_clamped(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) noexcept {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, silu_times(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const auto mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, mask,
                          silu_times(_mm512_maskz_loadu_ps(mask, gate + i), _mm512_maskz_loadu_ps(mask, up + i)));
  }
}

}  // namespace

void fill_activation_kernels(KernelTable& t) noexcept { t.silu_mul = silu_mul; }

}  // namespace tandem::kernels::avx512
