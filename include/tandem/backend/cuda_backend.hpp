#pragma once
// The CUDA backend: the forward pass's Backend calls run as CUDA kernels (cuda/, tandem_cuda) on one
// GPU. Built when CMake finds nvcc (TANDEM_CUDA); these declarations exist in every build.
//
// Interim, until device-resident activation buffers land (Backend v2): the Backend interface takes
// host float32 activations, so each call copies its inputs to the device, runs its kernels on the
// backend's stream and copies its outputs back before returning. Weights are uploaded once (at load
// by the engine through cuda_backend_upload, else the first time a call sees them), cached by the
// host bytes they come from (address and size), so those bytes must stay valid and unchanged while
// the backend lives, as the engine's file mapping does. Norm weights and biases of the forward pass's host vectors are copied
// per call (they are small). The KV pool stays in host
// memory, where the forward pass writes it; each attention call copies the blocks its batch reads
// (that layer's part of them) to the device. Correct, and slow next to the CPU on large contexts:
// the point of this slice is every op on the GPU checked against its CPU reference.
#include <cstdint>
#include <memory>

#include "tandem/backend/backend.hpp"

namespace tandem {

// Whether this build has the CUDA backend compiled in.
bool cuda_backend_built() noexcept;
// CUDA devices this process can use: 0 without the backend, a driver or a GPU.
int cuda_device_count() noexcept;
// A GPU's total memory in bytes; 0 without the backend, a GPU or a driver answer.
uint64_t cuda_device_total_bytes(int device) noexcept;

// A backend on GPU `device`. Throws Error(unsupported) when the build has no CUDA backend,
// Error(invalid_argument) naming the devices present when `device` is not one of them.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Uploads a weight (a linear's matrix, bias and FP8 scales; or an embedding table) to `backend`'s
// GPU now, at load, instead of at its first use; nothing for other backends. Throws the errors
// first use would (a stored type without a kernel, out of GPU memory with the bytes needed).
void cuda_backend_upload(Backend& backend, const LinearWeight& weight);
void cuda_backend_upload(Backend& backend, const TensorView& table);
// Bytes of weights `backend` holds on its GPU (0 for other backends).
uint64_t cuda_backend_weight_bytes(const Backend& backend);

}  // namespace tandem
