// Whether the CUDA backend is in this build (TANDEM_WITH_CUDA, set when tandem_engine links
// tandem_cuda) and how many GPUs it sees. Without it, asking for the backend is a clear error.
#include <string>

#include "tandem/backend/cuda_backend.hpp"
#include "tandem/error.hpp"

#ifdef TANDEM_WITH_CUDA
#include "tandem/cuda/cuda_device.hpp"
#endif

namespace tandem {

bool cuda_weight_type_supported(DType type) noexcept {
  switch (type) {
    case DType::f32: case DType::f16: case DType::bf16: case DType::f8_e4m3:
    case DType::q4_0: case DType::q4_1: case DType::q5_0: case DType::q5_1: case DType::iq4_nl: case DType::q8_0:
    case DType::q4_k: case DType::q5_k: case DType::q6_k: case DType::iq4_xs:
      return true;
    default:
      return false;
  }
}

bool cuda_kv_type_supported(KvType type) noexcept { return !kv_type_is_int4(type); }

#ifdef TANDEM_WITH_CUDA
bool cuda_backend_built() noexcept { return true; }
int cuda_device_count() noexcept { return cuda::device_count(); }
uint64_t cuda_device_total_bytes(int device) noexcept {
  try {
    return device >= 0 && device < cuda::device_count() ? cuda::device_info(device).total_bytes : 0;
  } catch (...) {
    return 0;
  }
}
uint64_t cuda_device_free_bytes(int device) noexcept {
  try {
    return device >= 0 && device < cuda::device_count() ? cuda::device_info(device).free_bytes : 0;
  } catch (...) {
    return 0;
  }
}
#else
bool cuda_backend_built() noexcept { return false; }
int cuda_device_count() noexcept { return 0; }
uint64_t cuda_device_total_bytes(int) noexcept { return 0; }
uint64_t cuda_device_free_bytes(int) noexcept { return 0; }
std::unique_ptr<Backend> make_cuda_backend(int device) {
  throw Error(ErrorKind::unsupported, "cuda:" + std::to_string(device) +
                                          " requested, but this build has no CUDA backend (configure with "
                                          "-DTANDEM_CUDA=ON where nvcc is installed)");
}
void cuda_backend_set_prefill_bf16(Backend&, bool) {}
void cuda_backend_set_decode_q8(Backend&, bool) {}
void cuda_backend_set_fused_norm(Backend&, bool) {}
void cuda_backend_set_fused_router(Backend&, bool) {}
void cuda_backend_set_fused_prologue(Backend&, bool) {}
uint64_t cuda_backend_weight_bytes(const Backend&) { return 0; }
uint64_t cuda_backend_kv_bytes(const Backend&) { return 0; }
#endif

}  // namespace tandem
