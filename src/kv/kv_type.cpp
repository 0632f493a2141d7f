#include "tandem/kv/kv_type.hpp"

#include <cstring>
#include <string>

#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_quant.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define TANDEM_KV_F16C 1
#endif

namespace tandem {
namespace {

#if TANDEM_KV_F16C
// The build targets baseline x86-64; F16C is chosen at run time, once.
bool cpu_has_f16c() noexcept {
  // CPUID.1:ECX bit 29 (clang 14's __builtin_cpu_supports does not know "f16c"); "avx" also
  // checks that the OS saves the YMM state.
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
    return __builtin_cpu_supports("avx") && (ecx & (1u << 29)) != 0;
  }();
  return has;
}

__attribute__((target("avx,f16c"))) void encode_f16_f16c(const float* src, uint16_t* dst,
                                                         int64_t n) noexcept {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

__attribute__((target("avx,f16c"))) void decode_f16_f16c(const uint16_t* src, float* dst,
                                                         int64_t n) noexcept {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
#endif

}  // namespace

const char* kv_type_name(KvType t) noexcept {
  switch (t) {
    case KvType::f32:
      return "f32";
    case KvType::f16:
      return "f16";
    case KvType::bf16:
      return "bf16";
    case KvType::fp8:
      return "fp8";
    case KvType::int8:
      return "int8";
    case KvType::int4:
      return "int4";
    case KvType::int4_g64:
      return "int4:64";
  }
  return "unknown";
}

bool is_kv_type_name(std::string_view name) noexcept {
  return name == "f32" || name == "f16" || name == "bf16" || name == "fp8" || name == "int8" ||
         name == "int4" || name == "int4:32" || name == "int4:64";
}

KvType parse_kv_type(std::string_view name) {
  if (name == "f32") return KvType::f32;
  if (name == "f16") return KvType::f16;
  if (name == "bf16") return KvType::bf16;
  if (name == "fp8") return KvType::fp8;
  if (name == "int8") return KvType::int8;
  if (name == "int4" || name == "int4:32") return KvType::int4;
  if (name == "int4:64") return KvType::int4_g64;
  throw Error(ErrorKind::invalid_argument,
              "unknown KV cache type '" + std::string(name) +
                  "': use f32, f16, bf16, fp8, int8 or int4 (int4:32, or int4:64 for "
                  "groups of 64 values)");
}

namespace {
KvQuantRow quant_row(KvType t) {
  switch (t) {
    case KvType::fp8:
      return KvQuantRow::fp8;
    case KvType::int8:
      return KvQuantRow::int8;
    case KvType::int4_g64:
      return KvQuantRow::int4_g64;
    default:
      return KvQuantRow::int4;
  }
}
}  // namespace

size_t kv_row_bytes(KvType t, int64_t n) noexcept {
  if (kv_type_is_quantised(t)) return kv_quant_row_bytes(quant_row(t), n);
  return static_cast<size_t>(n) * kv_type_bytes(t);
}

void kv_decode_values(KvType t, const void* row, int64_t width, int64_t first, int64_t n, float* dst) noexcept {
  if (kv_type_is_quantised(t)) return kv_quant_decode_values(quant_row(t), row, width, first, n, dst);
  kv_decode_row(t, static_cast<const std::byte*>(row) + static_cast<size_t>(first) * kv_type_bytes(t), dst, n);
}

void kv_encode_row(KvType t, const float* src, void* dst, int64_t n) noexcept {
  switch (t) {
    case KvType::fp8:
    case KvType::int8:
    case KvType::int4:
    case KvType::int4_g64:
      return kv_quant_encode_row(quant_row(t), src, dst, n);
    case KvType::f32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case KvType::f16: {
      auto* out = static_cast<uint16_t*>(dst);
#if TANDEM_KV_F16C
      if (cpu_has_f16c()) return encode_f16_f16c(src, out, n);
#endif
      for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(src[i]);
      return;
    }
    case KvType::bf16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(src[i]);
      return;
    }
  }
}

void kv_decode_row(KvType t, const void* src, float* dst, int64_t n) noexcept {
  switch (t) {
    case KvType::fp8:
    case KvType::int8:
    case KvType::int4:
    case KvType::int4_g64:
      return kv_quant_decode_values(quant_row(t), src, n, 0, n, dst);
    case KvType::f32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case KvType::f16: {
      const auto* in = static_cast<const uint16_t*>(src);
#if TANDEM_KV_F16C
      if (cpu_has_f16c()) return decode_f16_f16c(in, dst, n);
#endif
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(in[i]);
      return;
    }
    case KvType::bf16: {
      // A shift: the compiler vectorises this loop with plain SSE2.
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
        std::memcpy(dst + i, &bits, 4);
      }
      return;
    }
  }
}

}  // namespace tandem
