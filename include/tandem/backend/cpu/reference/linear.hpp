#pragma once
// Reference matmul against stored weights: y[t, o] = Σ_i x[t, i]·W[o, i] (+ bias[o]). Weight rows
// are dequantised on the fly, a tile of rows at a time, into per-thread scratch; the weight is
// never copied or dequantised wholesale. FP8 rows are multiplied by their 128×128 block scale.
// Layout: x [rows, in] and y [rows, out], row-major float32.
#include <cstdint>
#include <vector>

#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

// Parallel over output tiles when `pool` is given, else on the calling thread.
void linear(ThreadPool* pool, const LinearWeight& w, const float* x, int64_t rows, float* y);

// Dequantises weight rows [row_begin, row_end) of `w` (with FP8 block scales) into dst
// [(row_end - row_begin), in_features].
void dequantize_weight_rows(const LinearWeight& w, int64_t row_begin, int64_t row_end, float* dst);

// A small tensor (a norm weight, a bias, a router bias) as float32. Empty view → empty vector.
std::vector<float> dequantize_to_vector(const TensorView& view);

// out[t] = table[ids[t]] for each id, dequantising quantised rows. Ids must be checked by the
// caller (0 <= id < rows).
void embedding_lookup(const TensorView& table, const int32_t* ids, int64_t count, float* out);

}  // namespace tandem
