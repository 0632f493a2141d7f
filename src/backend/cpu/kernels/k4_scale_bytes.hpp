#pragma once
// A Q4_K/Q5_K block's packed 6-bit scales and minimums unpacked in a vector register (SSSE3 byte
// shuffles), for the files built with -mavx2 or -mavx512*. Internal linkage on purpose, as
// quant_layouts.hpp: each ISA's file compiles its own copy. The scalar kernel's unpack_k4_scales
// (quant_layouts.hpp) is its reference, through the kernel tests at every ISA level.
#include <immintrin.h>

#include <cstdint>

namespace tandem::kernels {
namespace {

// The 12 scale bytes of a Q4_K/Q5_K block at p as [scales 0-7, mins 0-7] bytes: two byte shuffles and
// three masks. The 16-byte load reads 4 bytes past the scales, inside the block.
inline __m128i k4_scale_bytes(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // [b0-3 | b8-11 | b4-7 | b8-11] and the bytes whose top two bits extend scales/mins 4-7.
  const __m128i t1 = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i t2 = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i low = _mm_and_si128(t1, _mm_setr_epi8(0x3f, 0x3f, 0x3f, 0x3f, 0x0f, 0x0f, 0x0f, 0x0f, 0x3f, 0x3f,
                                                        0x3f, 0x3f, 0, 0, 0, 0));
  const __m128i high_nibble = _mm_and_si128(_mm_srli_epi16(t1, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                                                  0x0f, 0x0f, 0x0f, 0x0f));
  const __m128i top_bits = _mm_and_si128(_mm_srli_epi16(t2, 2), _mm_setr_epi8(0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0,
                                                                              0, 0, 0, 0x30, 0x30, 0x30, 0x30));
  return _mm_or_si128(_mm_or_si128(low, high_nibble), top_bits);
}

}  // namespace
}  // namespace tandem::kernels
