#include "tandem/tensor/dtype.hpp"

#include <array>
#include <cctype>

namespace tandem {
namespace {

// Indexed by DType's value; block layouts as ggml defines them (sizes include the scales).
constexpr std::array<DTypeTraits, 25> kTraits = {{
    {"f32", 1, 4, false},
    {"f16", 1, 2, false},
    {"bf16", 1, 2, false},
    {"f64", 1, 8, false},
    {"f8_e4m3", 1, 1, false},
    {"i8", 1, 1, false},
    {"i16", 1, 2, false},
    {"i32", 1, 4, false},
    {"i64", 1, 8, false},
    {"u8", 1, 1, false},
    {"bool", 1, 1, false},
    {"q4_0", 32, 18, true},    // f16 d, 16 B nibbles
    {"q4_1", 32, 20, true},    // f16 d, f16 m, 16 B nibbles
    {"q5_0", 32, 22, true},    // f16 d, 4 B high bits, 16 B nibbles
    {"q5_1", 32, 24, true},    // f16 d, f16 m, 4 B high bits, 16 B nibbles
    {"q8_0", 32, 34, true},    // f16 d, 32 x i8
    {"q8_1", 32, 36, true},    // f16 d, f16 sum, 32 x i8
    {"q2_k", 256, 84, true},   // 16 B scales, 64 B 2-bit quants, f16 d, f16 dmin
    {"q3_k", 256, 110, true},  // 32 B high bits, 64 B 2-bit quants, 12 B scales, f16 d
    {"q4_k", 256, 144, true},  // f16 d, f16 dmin, 12 B scales, 128 B nibbles
    {"q5_k", 256, 176, true},  // f16 d, f16 dmin, 12 B scales, 32 B high bits, 128 B nibbles
    {"q6_k", 256, 210, true},  // 128 B low nibbles, 64 B high bits, 16 x i8 scales, f16 d
    {"q8_k", 256, 292, true},  // f32 d, 256 x i8, 16 x i16 block sums
    {"iq4_nl", 32, 18, true},  // f16 d, 16 B nibbles into a non-linear table
    {"iq4_xs", 256, 136, true},// f16 d, u16 high scale bits, 4 B low scale bits, 128 B nibbles
}};
static_assert(static_cast<size_t>(DType::iq4_xs) + 1 == kTraits.size());

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

}  // namespace

const DTypeTraits& dtype_traits(DType t) noexcept {
  const auto i = static_cast<size_t>(t);
  return kTraits[i < kTraits.size() ? i : 0];
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (size_t i = 0; i < kTraits.size(); ++i) {
    if (equal_ignoring_case(kTraits[i].name, name)) return static_cast<DType>(i);
  }
  if (equal_ignoring_case(name, "boolean")) return DType::boolean;
  return std::nullopt;
}

std::optional<uint64_t> row_bytes(DType t, int64_t elems) noexcept {
  const DTypeTraits& tr = dtype_traits(t);
  if (elems < 0 || elems % tr.block_elems != 0) return std::nullopt;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(elems / tr.block_elems), static_cast<uint64_t>(tr.block_bytes), &bytes)) {
    return std::nullopt;
  }
  return bytes;
}

}  // namespace tandem
