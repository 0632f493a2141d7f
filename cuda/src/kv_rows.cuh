#pragma once
// One stored KV row on the device, as KvPool lays it out (kv_type.hpp, kv_quant.hpp): f32/f16/bf16
// values, or for fp8/int8 `width` codes, then width / kv_group_values(width) f16 group scales, then
// (MLA) the rope key's values in f16. The readers give the value a row holds as float32 — for the
// quantised kinds code · scale, the same product the CPU's kv_quant_decode_values forms, so both
// backends attend over identical floats. The encoder writes the bytes kv_quant_encode_row writes.
// Quantised rows are read and written bytewise: a row of an odd width has unaligned scales.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "tandem/kv/kv_quant.hpp"
#include "tandem/kv/kv_type.hpp"

namespace tandem::cuda::detail {

constexpr bool kv_quantised(KvType k) { return k == KvType::fp8 || k == KvType::int8; }
// The tensor cores' 16-bit type for a cache kind: fp8/int8 rows are dequantised into f16 tiles.
constexpr KvType kv_tile_type(KvType k) { return kv_quantised(k) ? KvType::f16 : k; }

// Bytes of the quantised part of a row (codes and scales) of `width` values.
__host__ __device__ constexpr int64_t quantised_row_bytes(int64_t width) {
  return width + 2 * (width / kv_group_values(width));
}

__device__ __forceinline__ uint16_t load_u16_bytes(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
__device__ __forceinline__ void store_u16_bytes(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}
__device__ __forceinline__ float f16_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// v stored as f16 at p: one 16-bit store where p is 2-byte aligned (the rope tail of every row of an
// even width), else bytewise from a 32-bit copy of the bits. The H100 lost the low byte of the f16
// when it was stored bytewise straight from the conversion (every MLA rope key had its low 8 bits
// zeroed: the kv_append byte test, 2026-12-05), though the PTX is right.
__device__ __forceinline__ void store_f16(uint8_t* p, float v) {
  const uint32_t bits = __half_as_ushort(__float2half_rn(v));
  if ((reinterpret_cast<uintptr_t>(p) & 1) == 0) {
    *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(bits);
  } else {
    p[0] = static_cast<uint8_t>(bits & 0xffu);
    p[1] = static_cast<uint8_t>(bits >> 8);
  }
}

// The bytes of the row at `slot` of a sequence (its block table `table`) in plane `plane` of a layer's
// paged planes (PagedKv's layout).
__device__ __forceinline__ char* kv_row_at(char* layer_base, int64_t block_tokens, int64_t block_stride,
                                           int64_t row_bytes, int64_t plane, int64_t slot, const int32_t* table) {
  const int32_t block = table[slot / block_tokens];
  return layer_base + block * block_stride + (plane * block_tokens + slot % block_tokens) * row_bytes;
}

// Block and slot of position s in blocks of `tokens` (≤ 2^16; positions < 2^31), for loops that find
// many rows (flash attention: every 16-byte piece of a tile): a power of two (the default 16) takes a
// shift and a mask, other sizes a 32-bit division (the 64-bit one cost the flash kernel more
// instructions than its tile's products).
struct BlockSlot {
  int tokens, shift;  // shift < 0: not a power of two
  __device__ __forceinline__ explicit BlockSlot(int64_t block_tokens) : tokens(static_cast<int>(block_tokens)), shift(0) {
    while ((1 << shift) < tokens) ++shift;
    if ((1 << shift) != tokens) shift = -1;
  }
  __device__ __forceinline__ void operator()(int64_t position, int& block, int& slot) const {
    const int s = static_cast<int>(position);
    block = shift >= 0 ? s >> shift : s / tokens;
    slot = s - block * tokens;
  }
};

// A value as a float KV row stores it (f32, f16 or bf16), rounded to nearest.
template <typename T>
__device__ __forceinline__ T encode_kv(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

// An E4M3 code's value (0x7f/0xff are NaN; the encoder writes them only for a NaN input).
__device__ __forceinline__ float e4m3_value(uint8_t code) {
  const int exponent = (code >> 3) & 15, mantissa = code & 7;
  float magnitude;
  if (exponent == 15 && mantissa == 7) magnitude = __int_as_float(0x7fc00000);
  else if (exponent == 0) magnitude = static_cast<float>(mantissa) * 0x1p-9f;
  else magnitude = __int_as_float(((exponent + 120) << 23) | (mantissa << 20));
  return (code & 0x80) ? -magnitude : magnitude;
}

template <KvType K>
__device__ __forceinline__ float code_value(uint8_t code) {
  if constexpr (K == KvType::fp8) return e4m3_value(code);
  else return static_cast<float>(static_cast<int8_t>(code));
}

// Group k's scale of a quantised row of `width` coded values.
__device__ __forceinline__ float group_scale(const uint8_t* row, int64_t width, int64_t k) {
  return f16_bits_to_float(load_u16_bytes(row + width + 2 * k));
}

// Value i of a stored row whose first `quantised_width` values are coded (fp8/int8; ignored for the
// float kinds). Values past quantised_width are the f16 tail.
template <KvType K>
__device__ __forceinline__ float kv_value(const uint8_t* row, int64_t i, int64_t quantised_width) {
  if constexpr (K == KvType::f32) {
    return reinterpret_cast<const float*>(row)[i];
  } else if constexpr (K == KvType::f16) {
    return __half2float(reinterpret_cast<const __half*>(row)[i]);
  } else if constexpr (K == KvType::bf16) {
    return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(row)[i]) << 16);
  } else {
    if (i >= quantised_width)
      return f16_bits_to_float(load_u16_bytes(row + quantised_row_bytes(quantised_width) + 2 * (i - quantised_width)));
    return code_value<K>(row[i]) * group_scale(row, quantised_width, i / kv_group_values(quantised_width));
  }
}

// ---- the encoder: kv_quant.cpp's arithmetic, operation for operation ----

// The smallest f16 not below v (v >= 0), as f16_round_up.
__device__ __forceinline__ uint16_t f16_round_up(float v) {
  v = fminf(v, 65504.0f);
  uint16_t h = __half_as_ushort(__float2half_rn(v));
  if (f16_bits_to_float(h) < v) ++h;
  return h;
}

// As f32_to_e4m3: saturates at ±448, rounds to nearest even, NaN to 0x7f with the sign.
__device__ __forceinline__ uint8_t f32_to_e4m3(float x) {
  const uint8_t sign = signbit(x) ? 0x80 : 0x00;
  const float a = fabsf(x);
  if (isnan(a)) return static_cast<uint8_t>(sign | 0x7f);
  if (!(a < 448.0f)) return static_cast<uint8_t>(sign | 0x7e);
  if (a < 0x1p-6f) return static_cast<uint8_t>(sign | static_cast<uint8_t>(rintf(a * 512.0f)));
  int e = 0;
  const float f = frexpf(a, &e);  // a = f · 2^e, f in [0.5, 1): 2f − 1 and its ·8 are exact
  int exponent = e - 1 + 7;
  int mantissa = static_cast<int>(rintf(__fmul_rn(__fsub_rn(__fmul_rn(2.0f, f), 1.0f), 8.0f)));
  if (mantissa == 8) {
    mantissa = 0;
    ++exponent;
  }
  const int code = min((exponent << 3) | mantissa, 0x7e);
  return static_cast<uint8_t>(sign | code);
}

// As clamped_round: round(q) within [lo, hi], a NaN becomes lo.
__device__ __forceinline__ float clamped_round(float q, float lo, float hi) {
  const float r = rintf(q);
  return r >= lo ? fminf(r, hi) : lo;
}

// One group's code for x under `scale` (the stored f16 scale as a float).
template <KvType K>
__device__ __forceinline__ uint8_t encode_code(float x, float scale) {
  const float scaled = scale > 0 ? __fdiv_rn(x, scale) : 0.0f;
  if constexpr (K == KvType::fp8) return f32_to_e4m3(scaled);
  else return static_cast<uint8_t>(static_cast<int8_t>(clamped_round(scaled, -127.0f, 127.0f)));
}

template <KvType K>
constexpr float kv_code_max() {
  return K == KvType::fp8 ? 448.0f : 127.0f;
}

}  // namespace tandem::cuda::detail
