#pragma once
// The element type of the KV cache and the row conversions between it and float32.
// f32/f16/bf16: writes round to nearest even (f16 through F16C when the CPU has it, else an exact
// scalar path); reads widen exactly. f32 rows are stored as given, so an f32 pool is bit-exact with
// float maths. fp8/int8/int4 are quantised with f16 scales per group of values (kv_quant.hpp has
// the layouts and error bounds); int4 keys of a GQA cache are quantised per channel over a block
// (KvPool), everything else per token. int4_g64 is int4 with per-token groups of 64 values instead
// of 32 (its keys are the same per-channel blocks).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

// Appended only: the SSD tier's records store the value.
enum class KvType { f32, f16, bf16, fp8, int8, int4, int4_g64 };

constexpr bool kv_type_is_int4(KvType t) { return t == KvType::int4 || t == KvType::int4_g64; }

constexpr bool kv_type_is_quantised(KvType t) {
  return t == KvType::fp8 || t == KvType::int8 || kv_type_is_int4(t);
}

// Bytes per value of the float types (f32 4, f16/bf16 2); the quantised types' rows are sized by
// kv_row_bytes (codes plus scales).
constexpr size_t kv_type_bytes(KvType t) { return t == KvType::f32 ? 4 : t == KvType::f16 || t == KvType::bf16 ? 2 : 1; }
const char* kv_type_name(KvType t) noexcept;  // "f32", "f16", "bf16", "fp8", "int8", "int4", "int4:64"
// Those names, and "int4:32" for int4 (the group size spelt out). Throws Error(invalid_argument)
// naming the accepted spellings for anything else.
KvType parse_kv_type(std::string_view name);
bool is_kv_type_name(std::string_view name) noexcept;

// Bytes of one stored row of n values (per-token layout).
size_t kv_row_bytes(KvType t, int64_t n) noexcept;
// dst = the row src[0, n) in type `t` (dst holds kv_row_bytes(t, n) bytes).
void kv_encode_row(KvType t, const float* src, void* dst, int64_t n) noexcept;
// dst[0, n) = float32 of the n stored values at src.
void kv_decode_row(KvType t, const void* src, float* dst, int64_t n) noexcept;
// dst[0, n) = values [first, first + n) of a stored row of `width` values.
void kv_decode_values(KvType t, const void* row, int64_t width, int64_t first, int64_t n, float* dst) noexcept;

}  // namespace tandem
