#include "backend/cpu/kernels/strip_repack.hpp"

#include <cstring>

#include "backend/cpu/kernels/quant_layouts.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem::kernels {
namespace {

float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void repack_q4_k_strip(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(in / 256 * kRepackedQ4KBlockBytes));
  for (int64_t b = 0; b < in / 256; ++b) {
    uint8_t* dst = out + b * kRepackedQ4KBlockBytes;
    auto* d = reinterpret_cast<float*>(dst + kRepackedQ4KD);
    auto* dmin = d + 16;
    uint8_t* scale = dst + kRepackedQ4KScales;
    uint8_t* minimum = dst + kRepackedQ4KMins;
    for (int r = 0; r < rows; ++r) {
      const uint8_t* blk = w + r * row_stride + b * kQ4KBytes;
      const uint8_t* qs = blk + 16;
      for (int j = 0; j < 4; ++j)
        for (int k = 0; k < 8; ++k) std::memcpy(dst + 64 * (8 * j + k) + 4 * r, qs + 32 * j + 4 * k, 4);
      d[r] = load_half(blk);
      dmin[r] = load_half(blk + 2);
      int sc[8], mn[8];
      unpack_k4_scales(blk + 4, sc, mn);
      for (int s = 0; s < 8; ++s) {
        scale[16 * s + r] = static_cast<uint8_t>(sc[s]);
        minimum[16 * s + r] = static_cast<uint8_t>(mn[s]);
      }
    }
  }
}

}  // namespace

bool repackable(WeightKind kind) noexcept { return kind == WeightKind::q4_k; }

int64_t repacked_strip_bytes(WeightKind kind, int64_t in) noexcept {
  return repackable(kind) ? in / 256 * kRepackedQ4KBlockBytes : 0;
}

int64_t repacked_bytes(WeightKind kind, int64_t rows, int64_t in) noexcept {
  if (rows <= 0 || in <= 0 || in % 256 != 0) return 0;
  return (rows + kTileRows - 1) / kTileRows * repacked_strip_bytes(kind, in);
}

void repack_strips(WeightKind kind, const uint8_t* w, int64_t row_stride, int64_t rows, int64_t in,
                   int64_t strip_begin, int64_t strip_end, uint8_t* out) {
  if (kind != WeightKind::q4_k) return;
  const int64_t strip_bytes = repacked_strip_bytes(kind, in);
  for (int64_t s = strip_begin; s < strip_end; ++s) {
    const int64_t r0 = s * kTileRows;
    const int n = static_cast<int>(rows - r0 < kTileRows ? rows - r0 : kTileRows);
    repack_q4_k_strip(w + r0 * row_stride, row_stride, n, in, out + s * strip_bytes);
  }
}

}  // namespace tandem::kernels
