#pragma once
// The quantised KV formats: what one row (or one block's key channels) looks like in memory, and
// the conversions to and from float32. Scales and minimums are f16; a group's scale is rounded up
// when stored, so no value ever clips. Values are grouped along the row in groups of
// kv_quant_group_values(format, width): 32, or the whole row when 32 does not divide it; int4_g64
// takes 64 where 64 divides the row, else the same.
//
// Per-token rows (one row = one token's K, V or MLA latent row of `width` values, G groups):
//   fp8   [width × E4M3 code][G × f16 scale]               scale = absmax / 448
//   int8  [width × int8 code][G × f16 scale]               scale = absmax / 127, symmetric
//   int4  [ceil(width/2) × two codes][G × (f16 scale, f16 min)]   x ≈ min + code·scale,
//         scale = (max - min) / 15; value i in byte i/2, even i in the low nibble
// Per-channel key blocks (int4 keys, KIVI): the `tokens` rows of one block share, per channel, one
// (scale, min) pair computed over those tokens:
//   [block_tokens × ceil(width/2) codes, slot-major][width × (f16 scale, f16 min)]
//
// Error bounds of one value x in a group (tested): fp8 |Δ| ≤ |x|/16 + scale/1024 (3 mantissa
// bits, subnormals below 2^-6·scale); int8 |Δ| ≤ scale/2; int4 |Δ| ≤ scale/2 + the f16 rounding
// of min (|min|/2048).
#include <cstddef>
#include <cstdint>

namespace tandem {

constexpr int64_t kKvGroupValues = 32;
constexpr int64_t kv_group_values(int64_t width) {
  return width % kKvGroupValues == 0 ? kKvGroupValues : width;
}

// E4M3 (the OCP FP8 format: 4 exponent bits, bias 7, 3 mantissa bits, no infinities, max 448).
uint8_t f32_to_e4m3(float x) noexcept;  // saturates at ±448, rounds to nearest even
float e4m3_to_f32(uint8_t code) noexcept;

// Per-token quantised rows (kv_type.hpp dispatches). int4_g64 is int4's layout with G = width/64.
enum class KvQuantRow { fp8, int8, int4, int4_g64 };
constexpr int64_t kv_quant_group_values(KvQuantRow format, int64_t width) {
  return format == KvQuantRow::int4_g64 && width % 64 == 0 ? 64 : kv_group_values(width);
}
size_t kv_quant_row_bytes(KvQuantRow format, int64_t width) noexcept;
void kv_quant_encode_row(KvQuantRow format, const float* src, void* dst, int64_t width) noexcept;
// dst[0, n) = values [first, first + n) of a stored row of `width` values.
void kv_quant_decode_values(KvQuantRow format, const void* row, int64_t width, int64_t first, int64_t n,
                            float* dst) noexcept;

// Per-channel int4 key blocks.
size_t kv_channel_block_bytes(int64_t width, int64_t block_tokens) noexcept;
// Quantises rows [tokens][width] (tokens <= block_tokens) into one block; slots past `tokens`
// are stored as zero codes.
void kv_channel_encode_block(const float* rows, int64_t tokens, int64_t width, int64_t block_tokens,
                             void* block) noexcept;
// dst[0, n) = values [first, first + n) of slot `slot`'s row.
void kv_channel_decode_values(const void* block, int64_t width, int64_t block_tokens, int64_t slot,
                              int64_t first, int64_t n, float* dst) noexcept;

}  // namespace tandem
