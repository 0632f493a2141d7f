#pragma once
// Requantising weights into int8 strips (layout: int8_strip_layout.hpp) and the scalar definition of
// the AMX kernel over them.
#include <cstdint>

#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/int8_strip_layout.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::kernels {

// Whether a `rows` × `in` matrix of `type` can be requantised (in a multiple of 256, a type the
// reference dequantises), and the bytes of one strip and of the whole copy (0: it cannot).
bool int8_requantisable(DType type, int64_t in) noexcept;
int64_t int8_strip_bytes(int64_t in) noexcept;
int64_t int8_strips_bytes(DType type, int64_t rows, int64_t in) noexcept;
// Writes strips [strip_begin, strip_end) of the matrix whose row r is at w + r · row_stride into
// `out` (the whole copy's start): each row dequantised by the reference, then per 256 values
// code = round(w / s) with s = max|w| / 127 (a block of zeros: s = 0, codes 0).
void requantise_int8_strips(DType type, const uint8_t* w, int64_t row_stride, int64_t rows, int64_t in,
                            int64_t strip_begin, int64_t strip_end, uint8_t* out);
// The definition the AMX kernel is held to, on Q8K activation rows: per token t and row r,
//   y = Σ_b fma(float(Σ_k a_q[k] · code[r, k]), s[r, b] · d_a[b], ·)   (blocks in order),
// the integer sums exact. `rows` <= kTileRows, any number of tokens; y as RepackedFn's.
void int8_strip_reference(const uint8_t* strip, int rows, const void* x, int64_t x_stride, int64_t tokens,
                          int64_t in, float* y, int64_t y_stride) noexcept;

}  // namespace tandem::kernels
