#pragma once
// Element and quant-block types of stored tensors. A quantised type packs `block_elems` values
// into `block_bytes`; plain types have block_elems == 1. Rows (the innermost dimension) are always
// a whole number of blocks.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tandem {

enum class DType : uint8_t {
  f32, f16, bf16, f64, f8_e4m3,
  i8, i16, i32, i64, u8, boolean,
  q4_0, q4_1, q5_0, q5_1, q8_0, q8_1,
  q2_k, q3_k, q4_k, q5_k, q6_k, q8_k,
  iq4_nl, iq4_xs,
};

struct DTypeTraits {
  std::string_view name;  // lower-case, as tools print it ("q4_k", "bf16")
  int64_t block_elems;
  int64_t block_bytes;
  bool quantised;
};

const DTypeTraits& dtype_traits(DType t) noexcept;
inline std::string_view dtype_name(DType t) noexcept { return dtype_traits(t).name; }
inline bool is_quantised(DType t) noexcept { return dtype_traits(t).quantised; }
std::optional<DType> dtype_from_name(std::string_view name) noexcept;

// Bytes of a row of `elems` values; nullopt when `elems` is not a whole number of blocks or the
// byte count overflows.
std::optional<uint64_t> row_bytes(DType t, int64_t elems) noexcept;

}  // namespace tandem
