#pragma once
// The tensor-core path of cuda::linear for many tokens (linear_tensor_cores.cu): inputs a multiple of
// 64 wide, x 16-byte aligned, at least kTensorCoreMinRows tokens; bf16 or float32-accurate 3xTF32.
#include <cstdint>

#include "tandem/cuda/kernels.hpp"

namespace tandem::cuda::detail {

constexpr int64_t kTensorCoreMinRows = 32;

bool tensor_core_linear_supported(const DeviceWeight& w, const float* x, int64_t rows);
void tensor_core_linear(Stream& stream, const DeviceWeight& w, int64_t row_bytes, const float* x, int64_t rows,
                        float* y, TensorCoreMath math);

}  // namespace tandem::cuda::detail
