#pragma once
// CUDA kernels over device pointers, enqueued on a Stream. Activations are float32 row-major;
// weights stay in their stored type (the same bytes as in the file), as on the CPU.
#include <cstdint>

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {

// y[rows, out] = x[rows, in] · Wᵀ for W [out, in] stored as f32, f16, bf16 or q8_0.
// One warp per output row and token block: a memory-bound GEMV for decode (rows small).
// Throws Error(unsupported) for other stored types.
void linear(Stream& stream, DType weight_type, const void* weight, int64_t out_features, int64_t in_features,
            const float* x, int64_t rows, float* y);

// out[r] = x[r] / rms(x[r]) * weight, per row of `dim` values.
void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
              float* out);

// out[r, i] = silu(gate[r, i]) * up[r, i].
void silu_glu(Stream& stream, const float* gate, const float* up, int64_t count, float* out);

}  // namespace tandem::cuda
