#pragma once
// The 6-bit scale/min pairs of Q4_K's and Q5_K's 8 sub-blocks, packed in 12 bytes: the reference
// decoders (dequantize.cpp) and the CPU kernels' scalar path read them through this one function.
// Internal linkage on purpose: the kernels include it in files built for different ISAs, and a
// shared inline function could be linked in its AVX-512 build on a CPU without AVX-512.
#include <cstdint>

namespace tandem::formats {
namespace {

inline void unpack_k4_scales(const uint8_t* p, int* scale, int* min) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scale[j] = p[j] & 63;
      min[j] = p[j + 4] & 63;
    } else {
      scale[j] = (p[j + 4] & 0xf) | ((p[j - 4] >> 6) << 4);
      min[j] = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
  }
}

}  // namespace
}  // namespace tandem::formats
