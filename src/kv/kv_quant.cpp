#include "tandem/kv/kv_quant.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "tandem/formats/dequantize.hpp"

namespace tandem {
namespace {

constexpr float kE4m3Max = 448.0f;

std::array<float, 128> e4m3_magnitudes() {
  std::array<float, 128> t{};
  for (int c = 0; c < 128; ++c) {
    const int exponent = c >> 3, mantissa = c & 7;
    if (exponent == 15 && mantissa == 7)
      t[static_cast<size_t>(c)] = std::numeric_limits<float>::quiet_NaN();
    else if (exponent == 0)
      t[static_cast<size_t>(c)] = std::ldexp(static_cast<float>(mantissa), -9);
    else
      t[static_cast<size_t>(c)] = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  }
  return t;
}

// The smallest f16 not below v (v >= 0): a stored scale never makes a value clip.
uint16_t f16_round_up(float v) noexcept {
  v = std::min(v, 65504.0f);
  uint16_t h = f32_to_f16(v);
  if (f16_to_f32(h) < v) ++h;  // positive f16 bit patterns are ordered like their values
  return h;
}

uint16_t load_u16(const std::byte* p) noexcept {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void store_u16(std::byte* p, uint16_t v) noexcept { std::memcpy(p, &v, 2); }

size_t packed_bytes(int64_t width) { return static_cast<size_t>((width + 1) / 2); }

uint8_t nibble(const std::byte* codes, int64_t i) noexcept {
  const auto b = static_cast<uint8_t>(codes[i / 2]);
  return (i & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 0x0f);
}
void set_nibble(std::byte* codes, int64_t i, uint8_t v) noexcept {
  auto b = static_cast<uint8_t>(codes[i / 2]);
  b = (i & 1) ? static_cast<uint8_t>((b & 0x0f) | (v << 4)) : static_cast<uint8_t>((b & 0xf0) | v);
  codes[i / 2] = static_cast<std::byte>(b);
}

// (scale, min) of values x[0, n) at stride `stride`, asymmetric over 15 steps.
struct ScaleMin {
  uint16_t scale_bits = 0, min_bits = 0;
  float scale = 0, min = 0;
};
ScaleMin int4_params(const float* x, int64_t n, int64_t stride) noexcept {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  ScaleMin p;
  p.min_bits = f32_to_f16(std::clamp(lo, -65504.0f, 65504.0f));
  p.min = f16_to_f32(p.min_bits);
  p.scale_bits = f16_round_up(std::max(0.0f, hi - p.min) / 15.0f);
  p.scale = f16_to_f32(p.scale_bits);
  return p;
}
// round(q) within [lo, hi]; a NaN (a broken activation) becomes lo rather than undefined behaviour.
float clamped_round(float q, float lo, float hi) noexcept {
  const float r = std::nearbyint(q);
  return r >= lo ? std::min(r, hi) : lo;
}

uint8_t int4_code(float x, const ScaleMin& p) noexcept {
  if (!(p.scale > 0)) return 0;
  return static_cast<uint8_t>(clamped_round((x - p.min) / p.scale, 0.0f, 15.0f));
}

}  // namespace

uint8_t f32_to_e4m3(float x) noexcept {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (std::isnan(a)) return static_cast<uint8_t>(sign | 0x7f);
  if (!(a < kE4m3Max)) return static_cast<uint8_t>(sign | 0x7e);
  if (a < 0x1p-6f) return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f)));
  int e = 0;
  const float f = std::frexp(a, &e);  // a = f · 2^e, f in [0.5, 1)
  int exponent = e - 1 + 7;
  int mantissa = static_cast<int>(std::nearbyint((2.0f * f - 1.0f) * 8.0f));
  if (mantissa == 8) {
    mantissa = 0;
    ++exponent;
  }
  const int code = std::min((exponent << 3) | mantissa, 0x7e);
  return static_cast<uint8_t>(sign | code);
}

namespace {
// Every signed code's value, built once (a read-only table).
const std::array<float, 256>& e4m3_values() noexcept {
  static const std::array<float, 256> table = [] {
    const std::array<float, 128> m = e4m3_magnitudes();
    std::array<float, 256> t{};
    for (size_t c = 0; c < 128; ++c) {
      t[c] = m[c];
      t[c + 128] = -m[c];
    }
    return t;
  }();
  return table;
}
}  // namespace

float e4m3_to_f32(uint8_t code) noexcept { return e4m3_values()[code]; }

size_t kv_quant_row_bytes(KvQuantRow format, int64_t width) noexcept {
  const auto groups = static_cast<size_t>(width / kv_quant_group_values(format, width));
  switch (format) {
    case KvQuantRow::fp8:
    case KvQuantRow::int8:
      return static_cast<size_t>(width) + 2 * groups;
    case KvQuantRow::int4:
    case KvQuantRow::int4_g64:
      return packed_bytes(width) + 4 * groups;
  }
  return 0;
}

void kv_quant_encode_row(KvQuantRow format, const float* src, void* dst, int64_t width) noexcept {
  auto* out = static_cast<std::byte*>(dst);
  const int64_t g = kv_quant_group_values(format, width), groups = width / g;
  if (format == KvQuantRow::int4 || format == KvQuantRow::int4_g64) {
    std::byte* params = out + packed_bytes(width);
    std::memset(out, 0, packed_bytes(width));
    for (int64_t k = 0; k < groups; ++k) {
      const ScaleMin p = int4_params(src + k * g, g, 1);
      store_u16(params + 4 * k, p.scale_bits);
      store_u16(params + 4 * k + 2, p.min_bits);
      for (int64_t i = k * g; i < (k + 1) * g; ++i) set_nibble(out, i, int4_code(src[i], p));
    }
    return;
  }
  std::byte* scales = out + width;
  const float qmax = format == KvQuantRow::fp8 ? kE4m3Max : 127.0f;
  for (int64_t k = 0; k < groups; ++k) {
    float absmax = 0;
    for (int64_t i = k * g; i < (k + 1) * g; ++i) absmax = std::max(absmax, std::fabs(src[i]));
    const uint16_t bits = f16_round_up(absmax / qmax);
    store_u16(scales + 2 * k, bits);
    const float scale = f16_to_f32(bits);
    for (int64_t i = k * g; i < (k + 1) * g; ++i) {
      const float scaled = scale > 0 ? src[i] / scale : 0.0f;
      if (format == KvQuantRow::fp8)
        out[i] = static_cast<std::byte>(f32_to_e4m3(scaled));
      else
        out[i] = static_cast<std::byte>(static_cast<int8_t>(clamped_round(scaled, -127.0f, 127.0f)));
    }
  }
}

void kv_quant_decode_values(KvQuantRow format, const void* row, int64_t width, int64_t first, int64_t n,
                            float* dst) noexcept {
  const auto* in = static_cast<const std::byte*>(row);
  const int64_t g = kv_quant_group_values(format, width);
  const int64_t end = first + n;
  if (format == KvQuantRow::int4 || format == KvQuantRow::int4_g64) {
    const std::byte* params = in + packed_bytes(width);
    for (int64_t i = first; i < end;) {
      const int64_t k = i / g, stop = std::min(end, (k + 1) * g);
      const float scale = f16_to_f32(load_u16(params + 4 * k)), min = f16_to_f32(load_u16(params + 4 * k + 2));
      for (; i < stop; ++i) dst[i - first] = min + static_cast<float>(nibble(in, i)) * scale;
    }
    return;
  }
  const std::byte* scales = in + width;
  for (int64_t i = first; i < end;) {
    const int64_t k = i / g, stop = std::min(end, (k + 1) * g);
    const float scale = f16_to_f32(load_u16(scales + 2 * k));
    if (format == KvQuantRow::fp8)
      for (const std::array<float, 256>& table = e4m3_values(); i < stop; ++i)
        dst[i - first] = table[static_cast<uint8_t>(in[i])] * scale;
    else
      for (; i < stop; ++i) dst[i - first] = static_cast<float>(static_cast<int8_t>(in[i])) * scale;
  }
}

size_t kv_channel_block_bytes(int64_t width, int64_t block_tokens) noexcept {
  return static_cast<size_t>(block_tokens) * packed_bytes(width) + 4 * static_cast<size_t>(width);
}

void kv_channel_encode_block(const float* rows, int64_t tokens, int64_t width, int64_t block_tokens,
                             void* block) noexcept {
  auto* out = static_cast<std::byte*>(block);
  const size_t row_codes = packed_bytes(width);
  std::byte* params = out + static_cast<size_t>(block_tokens) * row_codes;
  std::memset(out, 0, static_cast<size_t>(block_tokens) * row_codes);
  for (int64_t c = 0; c < width; ++c) {
    const ScaleMin p = tokens > 0 ? int4_params(rows + c, tokens, width) : ScaleMin{};
    store_u16(params + 4 * c, p.scale_bits);
    store_u16(params + 4 * c + 2, p.min_bits);
    for (int64_t s = 0; s < tokens; ++s)
      set_nibble(out + static_cast<size_t>(s) * row_codes, c, int4_code(rows[s * width + c], p));
  }
}

void kv_channel_decode_values(const void* block, int64_t width, int64_t block_tokens, int64_t slot,
                              int64_t first, int64_t n, float* dst) noexcept {
  const auto* in = static_cast<const std::byte*>(block);
  const size_t row_codes = packed_bytes(width);
  const std::byte* codes = in + static_cast<size_t>(slot) * row_codes;
  const std::byte* params = in + static_cast<size_t>(block_tokens) * row_codes;
  for (int64_t c = first; c < first + n; ++c)
    dst[c - first] = f16_to_f32(load_u16(params + 4 * c + 2)) +
                     static_cast<float>(nibble(codes, c)) * f16_to_f32(load_u16(params + 4 * c));
}

}  // namespace tandem
