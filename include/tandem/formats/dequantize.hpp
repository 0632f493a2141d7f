#pragma once
// Scalar reference dequantisation of stored types to float32: the ground truth the fast kernels
// of later issues are held to. Bit-exact with gguf-py's numpy reference.
#include <cstdint>

#include "tandem/tensor/dtype.hpp"

namespace tandem {

// Converts `elems` values (a whole number of blocks) at `src` to float32 at `dst`.
// Throws Error(unsupported) for types without a reference path.
void dequantize_row(DType type, const void* src, float* dst, int64_t elems);

float f16_to_f32(uint16_t h) noexcept;
float bf16_to_f32(uint16_t b) noexcept;
float f8_e4m3_to_f32(uint8_t v) noexcept;
uint16_t f32_to_f16(float f) noexcept;
uint16_t f32_to_bf16(float f) noexcept;  // round to nearest even

}  // namespace tandem
