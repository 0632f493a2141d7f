#pragma once
// Random weight rows in a stored type, for the kernel tests that compare fast paths with references.
#include <cstdint>
#include <random>
#include <vector>

#include "tandem/tensor/dtype.hpp"

namespace tandem::test {

// `rows` × `in` values of `type` as stored: random quants (every bit pattern of them is valid), block
// scales in [0.002, 0.02), Q4_1/Q5_1 minimums near −8·d / −16·d (as rows centred on zero have),
// F32/F16/BF16 values normal with standard deviation `float_sd`, FP8 bytes that are never NaN (with
// `modest_fp8`, exponents kept small too). Throws std::invalid_argument for a type it cannot make.
std::vector<uint8_t> random_weight_rows(DType type, int64_t rows, int64_t in, std::mt19937& rng, float float_sd = 1.0f,
                                        bool modest_fp8 = false);

}  // namespace tandem::test
