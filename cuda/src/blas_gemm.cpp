// cuBLAS through dlopen: the handle, its stream, one GemmEx per call (see blas_gemm.hpp).
#include "tandem/cuda/blas_gemm.hpp"

#include <cublas_api.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include "tandem/error.hpp"

namespace tandem::cuda {
namespace {

using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
using DestroyFn = cublasStatus_t (*)(cublasHandle_t);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
using GemmBatchedExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                           const void*, const void* const[], cudaDataType, int, const void* const[],
                                           cudaDataType, int, const void*, void* const[], cudaDataType, int, int,
                                           cublasComputeType_t, cublasGemmAlgo_t);

void check_dimensions(int64_t rows, int64_t out, int64_t in, int64_t count = 1) {
  constexpr int64_t kMax = 0x7fffffff;
  if (rows <= 0 || out <= 0 || in <= 0 || count <= 0 || rows > kMax || out > kMax || in > kMax || count > kMax)
    throw Error(ErrorKind::out_of_range, "cuBLAS GEMM: a dimension outside [1, 2^31)");
}

}  // namespace

BlasGemm::~BlasGemm() {
  if (handle_ != nullptr && destroy_ != nullptr) {
    cudaSetDevice(device_);
    reinterpret_cast<DestroyFn>(destroy_)(static_cast<cublasHandle_t>(handle_));
  }
  if (library_ != nullptr) dlclose(library_);
}

bool BlasGemm::available() {
  if (tried_) return handle_ != nullptr;
  tried_ = true;
  for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
    library_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (library_ != nullptr) break;
  }
  if (library_ == nullptr) {
    why_not_ = "libcublas.so (13 or 12) not found by the dynamic loader";
    return false;
  }
  auto* create = reinterpret_cast<CreateFn>(dlsym(library_, "cublasCreate_v2"));
  destroy_ = dlsym(library_, "cublasDestroy_v2");
  set_stream_ = dlsym(library_, "cublasSetStream_v2");
  gemm_ = dlsym(library_, "cublasGemmEx");
  gemm_batched_ = dlsym(library_, "cublasGemmBatchedEx");
  if (create == nullptr || destroy_ == nullptr || set_stream_ == nullptr || gemm_ == nullptr ||
      gemm_batched_ == nullptr) {
    why_not_ = "libcublas lacks cublasCreate_v2/cublasGemmEx/cublasGemmBatchedEx";
    return false;
  }
  cudaSetDevice(device_);
  cublasHandle_t handle = nullptr;
  if (const cublasStatus_t status = create(&handle); status != CUBLAS_STATUS_SUCCESS) {
    why_not_ = "cublasCreate failed with status " + std::to_string(static_cast<int>(status));
    return false;
  }
  handle_ = handle;
  return true;
}

void BlasGemm::gemm(Stream& stream, const void* w, const void* x, bool f32_operands, int64_t rows, int64_t out,
                    int64_t in, float* y) {
  if (handle_ == nullptr) throw Error(ErrorKind::internal, "cuBLAS GEMM called without cuBLAS: " + why_not_);
  check_dimensions(rows, out, in);
  auto* handle = static_cast<cublasHandle_t>(handle_);
  reinterpret_cast<SetStreamFn>(set_stream_)(handle, static_cast<cudaStream_t>(stream.native()));
  const float one = 1.f, zero = 0.f;
  const cudaDataType operands = f32_operands ? CUDA_R_32F : CUDA_R_16BF;
  // Column-major view: yᵀ [out, rows] = (w [in, out] col-major)ᵀ · xᵀ [in, rows]. CUBLAS_COMPUTE_32F
  // on float32 operands is plain float32 arithmetic (the handle keeps the default math mode: no TF32).
  const cublasStatus_t status = reinterpret_cast<GemmExFn>(gemm_)(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows), static_cast<int>(in), &one, w,
      operands, static_cast<int>(in), x, operands, static_cast<int>(in), &zero, y, CUDA_R_32F,
      static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorKind::internal, "cuBLAS GemmEx failed with status " + std::to_string(static_cast<int>(status)));
}

void BlasGemm::gemm_bf16_batched(Stream& stream, const void* const* w, const void* const* x, float* const* y,
                                 int64_t count, int64_t rows, int64_t out, int64_t in) {
  if (handle_ == nullptr) throw Error(ErrorKind::internal, "cuBLAS GEMM called without cuBLAS: " + why_not_);
  check_dimensions(rows, out, in, count);
  auto* handle = static_cast<cublasHandle_t>(handle_);
  reinterpret_cast<SetStreamFn>(set_stream_)(handle, static_cast<cudaStream_t>(stream.native()));
  const float one = 1.f, zero = 0.f;
  const cublasStatus_t status = reinterpret_cast<GemmBatchedExFn>(gemm_batched_)(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows), static_cast<int>(in), &one, w,
      CUDA_R_16BF, static_cast<int>(in), x, CUDA_R_16BF, static_cast<int>(in), &zero,
      reinterpret_cast<void* const*>(y), CUDA_R_32F, static_cast<int>(out), static_cast<int>(count),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorKind::internal,
                "cuBLAS GemmBatchedEx failed with status " + std::to_string(static_cast<int>(status)));
}

}  // namespace tandem::cuda
