#pragma once
// The CUDA backend: the forward pass's Backend calls run as CUDA kernels (cuda/, tandem_cuda) on one
// GPU. Built when CMake finds nvcc (TANDEM_CUDA); these declarations exist in every build.
//
// Interim, until device-resident activation buffers land (Backend v2): the Backend interface takes
// host float32 activations, so each call copies its inputs to the device, runs its kernels on the
// backend's stream and copies its outputs back before returning. Weights are uploaded once, the
// first time a call sees them (cached by the TensorView's data pointer). The KV pool stays in host
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

// A backend on GPU `device`. Throws Error(unsupported) when the build has no CUDA backend,
// Error(invalid_argument) naming the devices present when `device` is not one of them.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace tandem
