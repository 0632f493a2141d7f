#include "backend/cpu/kernels/int8_strips.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem::kernels {

bool int8_requantisable(DType type, int64_t in) noexcept {
  if (in <= 0 || in % 256 != 0) return false;
  const DTypeTraits& traits = dtype_traits(type);
  return traits.block_elems > 0 && 256 % traits.block_elems == 0 && type != DType::f8_e4m3;
}

int64_t int8_strip_bytes(int64_t in) noexcept { return in / 256 * kInt8BlockBytes; }

int64_t int8_strips_bytes(DType type, int64_t rows, int64_t in) noexcept {
  if (rows <= 0 || !int8_requantisable(type, in)) return 0;
  return (rows + kTileRows - 1) / kTileRows * int8_strip_bytes(in);
}

void requantise_int8_strips(DType type, const uint8_t* w, int64_t row_stride, int64_t rows, int64_t in,
                            int64_t strip_begin, int64_t strip_end, uint8_t* out) {
  if (!int8_requantisable(type, in)) return;
  const int64_t strip_bytes = int8_strip_bytes(in);
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t s = strip_begin; s < strip_end; ++s) {
    uint8_t* strip = out + s * strip_bytes;
    std::memset(strip, 0, static_cast<size_t>(strip_bytes));
    for (int r = 0; r < kTileRows && s * kTileRows + r < rows; ++r) {
      dequantize_row(type, w + (s * kTileRows + r) * row_stride, row.data(), in);
      for (int64_t b = 0; b < in / 256; ++b) {
        const float* v = row.data() + b * 256;
        float amax = 0;
        for (int i = 0; i < 256; ++i) amax = std::max(amax, std::fabs(v[i]));
        uint8_t* blk = strip + b * kInt8BlockBytes;
        const float scale = amax / 127.0f;
        std::memcpy(blk + kInt8Scales + 4 * r, &scale, 4);
        if (scale == 0.0f) continue;
        const float inverse = 1.0f / scale;
        for (int i = 0; i < 256; ++i) {
          const long code = std::clamp(std::lround(v[i] * inverse), -127L, 127L);
          blk[int8_code_offset(i, r)] = static_cast<uint8_t>(static_cast<int8_t>(code));
        }
      }
    }
  }
}

void int8_strip_reference(const uint8_t* strip, int rows, const void* x, int64_t x_stride, int64_t tokens,
                          int64_t in, float* y, int64_t y_stride) noexcept {
  for (int64_t t = 0; t < tokens; ++t) {
    const auto* act = reinterpret_cast<const ActQ8K*>(static_cast<const uint8_t*>(x) + t * x_stride);
    for (int r = 0; r < rows; ++r) {
      float acc = 0;
      for (int64_t b = 0; b < in / 256; ++b) {
        const uint8_t* blk = strip + b * kInt8BlockBytes;
        int32_t sum = 0;
        for (int i = 0; i < 256; ++i)
          sum += static_cast<int32_t>(act[b].q[i]) *
                 static_cast<int8_t>(blk[int8_code_offset(i, r)]);
        float scale;
        std::memcpy(&scale, blk + kInt8Scales + 4 * r, 4);
        acc = std::fma(static_cast<float>(sum), scale * act[b].d, acc);
      }
      y[t * y_stride + r] = acc;
    }
  }
}

}  // namespace tandem::kernels
