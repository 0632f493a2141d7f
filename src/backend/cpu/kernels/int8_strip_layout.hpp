#pragma once
// Weights requantised to int8 at preparation, in 16-row strips laid out as AMX's B tiles, for the
// prefill kernels of CPUs with AMX-INT8 (tile_amx.cpp's int8 kernel): the scale groups of the stored
// types (Q4_K's 32 values, Q6_K's 16) cost the split-scale kernels a result tile and a float step
// per group — or the forming of scaled operands on every call — where one int8 scale per row and
// 256-value block needs one float step a block and no forming at all. The copy costs 1.016 bytes a
// weight (Q4_K's rows: 0.5625) and a requantisation error of at most half a step, s/2 with
// s = max|w|/127 over the row's block (the stored type's own step is ~max|w|/7 for Q4_K).
//
// Per strip and 256-value block (kInt8BlockBytes = 4,160 bytes), 64-byte aligned when the buffer is:
//   [0, 4096)     4 chunks of 64 values, each a B tile of 16 rows × 64 bytes: chunk c, tile row k
//                 holds, for each weight row r at bytes 4r..4r+3, its int8 codes of values
//                 64c + 4k .. 64c + 4k + 3;
//   [4096, 4160)  the rows' scales s as float (weight = s · code).
// Rows past the matrix's last (a partial last strip) are zeros. Strips follow each other: strip s at
// s · (in / 256) · kInt8BlockBytes.
#include <cstdint>

namespace tandem::kernels {

constexpr int64_t kInt8BlockBytes = 4160;
constexpr int64_t kInt8Scales = 4096;

// Where, in its block, the code of value v (< 256) of strip row r (< 16) lies.
constexpr int64_t int8_code_offset(int64_t v, int64_t r) { return 1024 * (v / 64) + 64 * (v % 64 / 4) + 4 * r + v % 4; }

}  // namespace tandem::kernels
