#pragma once
// Large-batch GEMMs through cuBLAS (part of the CUDA Toolkit), loaded at run time so that nothing
// links it and a machine without it falls back to the tile kernels: y = x · wᵀ with bf16 operands
// and float32 accumulation and output, or all in float32. The CUDA backend uses it for prefill batches of
// kBlasMinRows+ tokens, the weight dequantised to bf16 once per call (cuda::dequantize_bf16).
#include <cstdint>
#include <string>

#include "tandem/cuda/cuda_device.hpp"

namespace tandem::cuda {

class BlasGemm {
 public:
  explicit BlasGemm(int device) : device_(device) {}
  ~BlasGemm();
  BlasGemm(const BlasGemm&) = delete;
  BlasGemm& operator=(const BlasGemm&) = delete;

  // Whether cuBLAS could be loaded (tried once, on the first call); why not in `why_not()`.
  bool available();
  const std::string& why_not() const { return why_not_; }
  // y [rows, out] float32 = x [rows, in] bf16 · w [out, in]ᵀ bf16, queued on `stream` (device
  // pointers). Error(internal) naming cuBLAS's status when a call fails; call only when available().
  void gemm_bf16(Stream& stream, const void* w, const void* x, int64_t rows, int64_t out, int64_t in, float* y) {
    gemm(stream, w, x, false, rows, out, in, y);
  }
  // The same with float32 w and x, in float32 arithmetic (for F32 weights: the routers' matrices).
  void gemm_f32(Stream& stream, const float* w, const float* x, int64_t rows, int64_t out, int64_t in, float* y) {
    gemm(stream, w, x, true, rows, out, in, y);
  }
  // The same for `count` problems of one shape at once: w, x and y are device arrays of [count]
  // device pointers (cublasGemmBatchedEx).
  void gemm_bf16_batched(Stream& stream, const void* const* w, const void* const* x, float* const* y, int64_t count,
                         int64_t rows, int64_t out, int64_t in);

 private:
  void gemm(Stream& stream, const void* w, const void* x, bool f32_operands, int64_t rows, int64_t out, int64_t in,
            float* y);
  int device_;
  bool tried_ = false;
  std::string why_not_;
  void* library_ = nullptr;  // dlopen handle
  void* handle_ = nullptr;   // cublasHandle_t
  void* gemm_ = nullptr;     // cublasGemmEx
  void* gemm_batched_ = nullptr;  // cublasGemmBatchedEx
  void* set_stream_ = nullptr;
  void* destroy_ = nullptr;
};

}  // namespace tandem::cuda
