#include "tandem/formats/dequantize.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "formats/k_quant_scales.hpp"
#include "tandem/error.hpp"

// Each block decoder follows ggml's block layout. The float operations are ordered exactly as the
// reference (scale * sub-scale first, then * quant, then - min) so results are bit-identical; a
// fused multiply-add would round once instead of twice, so contraction stays off even when this
// file is built for FMA-capable targets (GCC already keeps it off in ISO C++ mode).
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace tandem {

float f16_to_f32(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // subnormal: exact
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) noexcept {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN stays NaN (quiet)
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to or is infinity
  if (magnitude < 0x38800000u) {                        // below 2^-14: subnormal half
    const double scaled = static_cast<double>(std::fabs(f)) * 0x1p24;  // exact in double
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));      // ties to even
  }
  uint32_t half = (magnitude >> 13) - (112u << 10);
  const uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

float bf16_to_f32(uint16_t b) noexcept {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) noexcept {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// OCP float8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN.
float f8_e4m3_to_f32(uint8_t v) noexcept {
  const int exponent = (v >> 3) & 0xf;
  const int mantissa = v & 0x7;
  float magnitude;
  if (exponent == 15 && mantissa == 7) {
    magnitude = std::nanf("");
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  }
  return (v & 0x80) ? -magnitude : magnitude;
}

namespace {

float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

constexpr int8_t kIq4NonLinear[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Q4_0: d, 16 bytes; low nibbles are values 0..15, high nibbles 16..31; q - 8.
void block_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0xf) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void block_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0xf) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q5: bit j of the 32-bit qh is the fifth bit of value j.
void block_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xf) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

void block_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xf) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + 16] = static_cast<float>(hi) * d + m;
  }
}

void block_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void block_q8_1(const uint8_t* b, float* y) {  // the f16 sum at b+2 is for dot products only
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[4 + j])) * d;
}

void block_q8_k(const uint8_t* b, float* y) {
  float d;
  std::memcpy(&d, b, 4);
  for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[4 + j]));
}

// Q2_K: 16 sub-blocks of 16; scale byte = min << 4 | scale. The 2-bit quants of a 128-value half
// sit in 32 bytes, four bit-planes of 32 values each.
void block_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = load_f16(b + 80), dmin = load_f16(b + 82);
  for (int i = 0; i < 256; ++i) {
    const int half = i / 128, plane = (i % 128) / 32, lane = i % 32;
    const int sub = i / 16;
    const float dl = d * static_cast<float>(scales[sub] & 0xf);
    const float ml = dmin * static_cast<float>(scales[sub] >> 4);
    const int q = (qs[half * 32 + lane] >> (2 * plane)) & 3;
    y[i] = dl * static_cast<float>(q) - ml;
  }
}

// Q3_K: 2 low bits as in Q2_K, a high bit from hmask (set means +0, clear means -4); 16 six-bit
// signed scales packed into 12 bytes.
void block_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* packed = b + 96;
  const float d = load_f16(b + 108);
  int scale[16];
  for (int s = 0; s < 16; ++s) {
    const int low4 = s < 8 ? (packed[s] & 0xf) : (packed[s - 8] >> 4);
    const int high2 = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
    scale[s] = (low4 | (high2 << 4)) - 32;
  }
  for (int i = 0; i < 256; ++i) {
    const int half = i / 128, plane = (i % 128) / 32, lane = i % 32;
    const int low = (qs[half * 32 + lane] >> (2 * plane)) & 3;
    const bool high = (hmask[lane] >> (half * 4 + plane)) & 1;
    const float dl = d * static_cast<float>(scale[i / 16]);
    y[i] = dl * static_cast<float>(low - (high ? 0 : 4));
  }
}

// Q4_K: 8 sub-blocks of 32; each 64-value chunk shares 32 bytes (low nibbles first).
void block_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  int scale[8], min[8];
  formats::unpack_k4_scales(b + 4, scale, min);
  const uint8_t* qs = b + 16;
  for (int i = 0; i < 256; ++i) {
    const int sub = i / 32, chunk = i / 64, lane = i % 32;
    const int q = (sub % 2 == 0) ? (qs[chunk * 32 + lane] & 0xf) : (qs[chunk * 32 + lane] >> 4);
    const float dl = d * static_cast<float>(scale[sub]);
    const float ml = dmin * static_cast<float>(min[sub]);
    y[i] = dl * static_cast<float>(q) - ml;
  }
}

// Q5_K: Q4_K plus a fifth bit; bit `sub` of qh[lane] belongs to sub-block `sub`.
void block_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  int scale[8], min[8];
  formats::unpack_k4_scales(b + 4, scale, min);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int i = 0; i < 256; ++i) {
    const int sub = i / 32, chunk = i / 64, lane = i % 32;
    const int low = (sub % 2 == 0) ? (qs[chunk * 32 + lane] & 0xf) : (qs[chunk * 32 + lane] >> 4);
    const int q = low | (((qh[lane] >> sub) & 1) << 4);
    const float dl = d * static_cast<float>(scale[sub]);
    const float ml = dmin * static_cast<float>(min[sub]);
    y[i] = dl * static_cast<float>(q) - ml;
  }
}

// Q6_K: per 128-value half, 64 bytes of low nibbles and 32 bytes of 2-bit high parts; 16 signed
// 8-bit scales, one per 16 values.
void block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  for (int i = 0; i < 256; ++i) {
    const int half = i / 128, quarter = (i % 128) / 32, lane = i % 32;
    const uint8_t low_byte = ql[half * 64 + (quarter % 2) * 32 + lane];
    const int low = quarter < 2 ? (low_byte & 0xf) : (low_byte >> 4);
    const int high = (qh[half * 32 + lane] >> (2 * quarter)) & 3;
    const int q = (low | (high << 4)) - 32;
    const float dl = d * static_cast<float>(scales[i / 16]);
    y[i] = dl * static_cast<float>(q);
  }
}

void block_iq4_nl(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kIq4NonLinear[qs[j] & 0xf]);
    y[j + 16] = d * static_cast<float>(kIq4NonLinear[qs[j] >> 4]);
  }
}

// IQ4_XS: 8 sub-blocks of 32 with 6-bit scales (low 4 bits in scales_l, high 2 in scales_h).
void block_iq4_xs(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  uint16_t scales_h;
  std::memcpy(&scales_h, b + 2, 2);
  const uint8_t* scales_l = b + 4;
  const uint8_t* qs = b + 8;
  for (int sub = 0; sub < 8; ++sub) {
    const int ls = ((scales_l[sub / 2] >> (4 * (sub % 2))) & 0xf) | (((scales_h >> (2 * sub)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    const uint8_t* q = qs + 16 * sub;
    float* out = y + 32 * sub;
    for (int j = 0; j < 16; ++j) {
      out[j] = dl * static_cast<float>(kIq4NonLinear[q[j] & 0xf]);
      out[j + 16] = dl * static_cast<float>(kIq4NonLinear[q[j] >> 4]);
    }
  }
}

using BlockDecoder = void (*)(const uint8_t*, float*);

BlockDecoder block_decoder(DType type) {
  switch (type) {
    case DType::q4_0: return block_q4_0;
    case DType::q4_1: return block_q4_1;
    case DType::q5_0: return block_q5_0;
    case DType::q5_1: return block_q5_1;
    case DType::q8_0: return block_q8_0;
    case DType::q8_1: return block_q8_1;
    case DType::q2_k: return block_q2_k;
    case DType::q3_k: return block_q3_k;
    case DType::q4_k: return block_q4_k;
    case DType::q5_k: return block_q5_k;
    case DType::q6_k: return block_q6_k;
    case DType::q8_k: return block_q8_k;
    case DType::iq4_nl: return block_iq4_nl;
    case DType::iq4_xs: return block_iq4_xs;
    default: return nullptr;
  }
}

}  // namespace

void dequantize_row(DType type, const void* src, float* dst, int64_t elems) {
  const DTypeTraits& tr = dtype_traits(type);
  if (elems < 0 || elems % tr.block_elems != 0) {
    throw Error(ErrorKind::invalid_argument, "dequantize_row: " + std::to_string(elems) + " values is not a whole number of " +
                                                 std::string(tr.name) + " blocks");
  }
  const auto* p = static_cast<const uint8_t*>(src);
  switch (type) {
    case DType::f32: std::memcpy(dst, p, static_cast<size_t>(elems) * 4); return;
    case DType::f16:
      for (int64_t i = 0; i < elems; ++i) dst[i] = load_f16(p + 2 * i);
      return;
    case DType::bf16:
      for (int64_t i = 0; i < elems; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        dst[i] = bf16_to_f32(b);
      }
      return;
    case DType::f64:
      for (int64_t i = 0; i < elems; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::f8_e4m3:
      for (int64_t i = 0; i < elems; ++i) dst[i] = f8_e4m3_to_f32(p[i]);
      return;
    default: break;
  }
  const BlockDecoder decode = block_decoder(type);
  if (!decode) throw Error(ErrorKind::unsupported, "dequantize_row: no reference dequantisation for " + std::string(tr.name));
  for (int64_t blk = 0; blk < elems / tr.block_elems; ++blk) {
    decode(p + blk * tr.block_bytes, dst + blk * tr.block_elems);
  }
}

}  // namespace tandem
