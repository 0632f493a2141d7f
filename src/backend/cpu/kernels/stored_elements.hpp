#pragma once
// Single stored elements read as float by the SIMD kernels (a row's scalar tail, a block's f16 scale):
// f16 through F16C, bf16, f32, and E4M3 as the f16 with its bits shifted into place (the value × 2^-8;
// the caller folds 256 into its scale). Needs F16C, so only the files built with -mavx2 or -mavx512*
// include it; internal linkage on purpose, as quant_layouts.hpp: each ISA's file compiles its own copy.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tandem::kernels {
namespace {

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline float tail_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
inline float tail_f16(const uint8_t* p) { return half(p); }
inline float tail_bf16(const uint8_t* p) {
  const uint32_t bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float tail_f8(const uint8_t* p) {
  return _cvtsh_ss(static_cast<unsigned short>(((p[0] & 0x7f) << 7) | ((p[0] & 0x80) << 8)));
}

}  // namespace
}  // namespace tandem::kernels
