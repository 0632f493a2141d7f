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

// A Q6_K block's value v (0..255) as its unsigned 6-bit code: value 128h + 32q + l is the low (q < 2)
// or high (q >= 2) nibble of ql[64h + 32·(q % 2) + l] with bits 2q, 2q + 1 of qh[32h + l] on top.
int q6_code(const uint8_t* blk, int v) {
  const int h = v / 128, q = v % 128 / 32, l = v % 32;
  const uint8_t low = blk[64 * h + 32 * (q % 2) + l];
  const int nibble = q < 2 ? low & 0x0f : low >> 4;
  return nibble | ((blk[128 + 32 * h + l] >> (2 * q)) & 3) << 4;
}

void repack_q6_k_strip(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(in / 256 * kRepackedQ6KBlockBytes));
  for (int64_t b = 0; b < in / 256; ++b) {
    uint8_t* dst = out + b * kRepackedQ6KBlockBytes;
    auto* d = reinterpret_cast<float*>(dst + kRepackedQ6KD);
    for (int r = 0; r < rows; ++r) {
      const uint8_t* blk = w + r * row_stride + b * kQ6KBytes;
      int code[256];
      for (int v = 0; v < 256; ++v) code[v] = q6_code(blk, v);
      for (int j = 0; j < 4; ++j)
        for (int k = 0; k < 4; ++k)
          for (int i = 0; i < 4; ++i) {
            const int v = 64 * j + 4 * k + i;  // group 4j's value at step k, byte i
            for (int p = 0; p < 2; ++p)
              dst[64 * (8 * j + 2 * k + p) + 4 * r + i] =
                  static_cast<uint8_t>((code[v + 32 * p] & 0x0f) | (code[v + 32 * p + 16] & 0x0f) << 4);
            int high = 0;
            for (int q = 0; q < 4; ++q) high |= (code[v + 16 * q] >> 4) << (2 * q);
            dst[kRepackedQ6KHigh + 64 * (4 * j + k) + 4 * r + i] = static_cast<uint8_t>(high);
          }
      for (int g = 0; g < 16; ++g) dst[kRepackedQ6KScales + 16 * g + r] = blk[192 + g];
      d[r] = load_half(blk + 208);
    }
  }
}

}  // namespace

bool repackable(WeightKind kind) noexcept { return kind == WeightKind::q4_k || kind == WeightKind::q6_k; }

int64_t repacked_strip_bytes(WeightKind kind, int64_t in) noexcept {
  switch (kind) {
    case WeightKind::q4_k:
      return in / 256 * kRepackedQ4KBlockBytes;
    case WeightKind::q6_k:
      return in / 256 * kRepackedQ6KBlockBytes;
    default:
      return 0;
  }
}

int64_t repacked_bytes(WeightKind kind, int64_t rows, int64_t in) noexcept {
  if (rows <= 0 || in <= 0 || in % 256 != 0) return 0;
  return (rows + kTileRows - 1) / kTileRows * repacked_strip_bytes(kind, in);
}

void repack_strips(WeightKind kind, const uint8_t* w, int64_t row_stride, int64_t rows, int64_t in,
                   int64_t strip_begin, int64_t strip_end, uint8_t* out) {
  if (!repackable(kind)) return;
  const int64_t strip_bytes = repacked_strip_bytes(kind, in);
  for (int64_t s = strip_begin; s < strip_end; ++s) {
    const int64_t r0 = s * kTileRows;
    const int n = static_cast<int>(rows - r0 < kTileRows ? rows - r0 : kTileRows);
    if (kind == WeightKind::q4_k)
      repack_q4_k_strip(w + r0 * row_stride, row_stride, n, in, out + s * strip_bytes);
    else
      repack_q6_k_strip(w + r0 * row_stride, row_stride, n, in, out + s * strip_bytes);
  }
}

}  // namespace tandem::kernels
