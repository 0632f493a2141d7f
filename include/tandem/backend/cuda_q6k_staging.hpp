#pragma once
// Which Q6_K matrices the CUDA decode GEMV (one token on int8 activations) reads by staging each
// warp's whole row in shared memory, 16 bytes at a time (Q6_K's 210-byte blocks otherwise allow 2-byte
// loads): the kernel's rule (cuda/src/linear.cu; it also needs the rows 16-byte aligned in VRAM, as
// uploads are), and `tandem plan`'s, which prices such an output head at its own rate. In every build.
#include <cstdint>

namespace tandem {

inline constexpr int64_t kCudaQ6kStagedMinRows = 2048;               // a warp per row, enough rows to fill the GPU
inline constexpr int64_t kCudaQ6kStagedMaxRowBytes = 8 * 32 * 16;    // 8 16-byte pieces per lane of a warp

constexpr bool cuda_q6k_rows_staged(int64_t rows, int64_t row_bytes) {
  return rows >= kCudaQ6kStagedMinRows && row_bytes % 16 == 0 && row_bytes <= kCudaQ6kStagedMaxRowBytes;
}

}  // namespace tandem
