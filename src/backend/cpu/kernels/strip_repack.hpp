#pragma once
// Weights repacked once, at preparation, into 16-row strips laid out as the AVX-512 tile kernels
// read them, so neither prefill (which otherwise gathers every strip into that order on every call)
// nor decode (which then reads one contiguous stream per strip) rearranges the stored rows again.
// The file's mapping stays the source: the copy is made from it and the original is not changed.
//
// Q4_K, per strip and 256-value block (kRepackedQ4KBlockBytes = 2,432 bytes, 1.056 × the rows' 2,304
// bytes), 64-byte aligned when the buffer is:
//   [0, 2048)     32 vectors of 16 rows × 4 bytes: vector 8j + k holds, for each row r at dword r, the
//                 row's quant bytes qs[32j + 4k .. 32j + 4k + 3] unchanged — low nibbles are values
//                 64j + 4k.. of scale group 2j, high nibbles the same offsets in group 2j + 1;
//   [2048, 2112)  the rows' d as float; [2112, 2176) their dmin as float;
//   [2176, 2304)  scale of group s, row r at 16s + r (unsigned 6-bit, one byte);
//   [2304, 2432)  minimum of group s, row r at 16s + r.
//
// Q6_K, per strip and 256-value block (kRepackedQ6KBlockBytes = 3,392 bytes, 1.0095 × the rows' 3,360),
// value v of a row taken as its unsigned 6-bit code u (the stored value is u − 32), groups of 16:
//   [0, 2048)     32 vectors: vector 8j + 2k + p holds, for row r at dword r, byte i: the low 4 bits of
//                 value 64j + 32p + 4k + i (group 4j + 2p) and, as its high nibble, those of the value
//                 16 further (group 4j + 2p + 1);
//   [2048, 3072)  16 vectors: vector 4j + k, row r at dword r, byte i: the top 2 bits of value
//                 64j + 16q + 4k + i at bits 2q, 2q + 1 (q = 0..3: groups 4j..4j + 3);
//   [3072, 3328)  scale of group g (int8), row r at 16g + r;
//   [3328, 3392)  the rows' d as float.
// So four groups' 4-value steps come from two nibble vectors and one high-bit vector, each group's
// bytes formed by one mask, one shift and one or.
//
// Rows past the matrix's last (a partial last strip) are zeros. Strips follow each other: strip s
// at s · (in / 256) · the type's block bytes.
#include <cstdint>

#include "backend/cpu/kernels/dot_kernels.hpp"

namespace tandem::kernels {

constexpr int64_t kRepackedQ4KBlockBytes = 2432;
// Where the parts of a repacked Q4_K block start (bytes from the block's start).
constexpr int64_t kRepackedQ4KD = 2048, kRepackedQ4KDmin = 2112, kRepackedQ4KScales = 2176, kRepackedQ4KMins = 2304;
constexpr int64_t kRepackedQ6KBlockBytes = 3392;
constexpr int64_t kRepackedQ6KHigh = 2048, kRepackedQ6KScales = 3072, kRepackedQ6KD = 3328;
constexpr int64_t kRepackedAlign = 64;

// Whether `kind` has a repacked layout.
bool repackable(WeightKind kind) noexcept;
// Bytes of one strip, and of the whole repacked matrix of `rows` × `in` (0: no repacked layout for
// this type or shape).
int64_t repacked_strip_bytes(WeightKind kind, int64_t in) noexcept;
int64_t repacked_bytes(WeightKind kind, int64_t rows, int64_t in) noexcept;
// Writes strips [strip_begin, strip_end) of the `rows` × `in` matrix whose row r is at
// w + r · row_stride into `out` (the whole repacked matrix's start).
void repack_strips(WeightKind kind, const uint8_t* w, int64_t row_stride, int64_t rows, int64_t in,
                   int64_t strip_begin, int64_t strip_end, uint8_t* out);

}  // namespace tandem::kernels
