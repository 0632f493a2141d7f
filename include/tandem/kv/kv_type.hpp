#pragma once
// The element type of the KV cache and the row conversions between it and float32.
// Writes round to nearest even (f16 through F16C when the CPU has it, else an exact scalar path);
// reads widen exactly. f32 rows are stored as given, so an f32 pool is bit-exact with float maths.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

enum class KvType { f32, f16, bf16 };

constexpr size_t kv_type_bytes(KvType t) { return t == KvType::f32 ? 4 : 2; }
const char* kv_type_name(KvType t) noexcept;  // "f32", "f16", "bf16"
// Throws Error(invalid_argument) naming the accepted spellings for anything else.
KvType parse_kv_type(std::string_view name);
bool is_kv_type_name(std::string_view name) noexcept;

// dst[0, n) = src[0, n) in type `t` (dst holds n · kv_type_bytes(t) bytes).
void kv_encode_row(KvType t, const float* src, void* dst, int64_t n) noexcept;
// dst[0, n) = float32 of the n stored values at src.
void kv_decode_row(KvType t, const void* src, float* dst, int64_t n) noexcept;

}  // namespace tandem
