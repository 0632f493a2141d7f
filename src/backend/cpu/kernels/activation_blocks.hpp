#pragma once
// Activations quantised per block for the integer dot products (plain structs: included by the
// ISA-specific files, which must not instantiate library templates).
//  - Q8K: 256 values, float scale d = max|x| / 127, q = round(x / d) in [-127, 127], and the sum
//    of each 16 values (for the K-quants' minimums and offsets). Used with Q4_K, Q5_K, Q6_K, IQ4_XS.
//  - Q8: 32 values with a float scale and the sum of the 32 values (for Q4_0's and the +128
//    offsets). Used with Q8_0 and Q4_0.
// Rounding error per value is at most d / 2 = max|x| / 254 of its block.
#include <cstdint>

namespace tandem::kernels {

struct ActQ8K {
  float d;
  int16_t sums[16];
  int8_t q[256];
};

struct ActQ8 {
  float d;
  int32_t sum;
  int8_t q[32];
};

static_assert(sizeof(ActQ8K) == 292 && sizeof(ActQ8) == 40, "packed activation blocks");

// `n` a multiple of the block size (256 / 32).
void quantize_act_q8k(const float* x, int64_t n, ActQ8K* out) noexcept;
void quantize_act_q8(const float* x, int64_t n, ActQ8* out) noexcept;

}  // namespace tandem::kernels
