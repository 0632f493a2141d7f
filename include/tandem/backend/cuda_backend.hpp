#pragma once
// The CUDA backend: the forward pass's Backend calls run as CUDA kernels (cuda/, tandem_cuda) on one
// GPU. Built when CMake finds nvcc (TANDEM_CUDA); these declarations exist in every build.
//
// Device-resident (Backend v2): activations are buffers the forward pass allocated through
// Backend::allocate (VRAM), and every op reads and writes them there on the backend's stream; the
// routed experts' ids come to the host (a few int32 per token) to group rows by expert. Weights are
// uploaded once (at load by the engine through Backend::prepare, else the first time a call sees
// them), cached by the host bytes they come from (address and size), so those bytes must stay valid
// and unchanged while the backend lives, as the engine's file mapping does; norm weights and router
// biases are prepared (prepare_vector) the same way. The KV layers this backend runs attention for
// live in VRAM (kv_attach): the host KvPool keeps block ids, references and tables, the GPU the rows,
// with the same block ids and layout; kv_append and the attention kernels use them in place, and a
// copy-on-write block copy of the pool is repeated on the GPU. KV types: f32, f16, bf16, fp8, int8
// (int4 and int4:64 → Error(unsupported) naming --kv-type); retention policies that compact or score rows
// need attention on the CPU (the engine refuses the combination at load).
#include <cstdint>
#include <memory>

#include "tandem/backend/backend.hpp"
#include "tandem/kv/kv_type.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem {

// Whether this build has the CUDA backend compiled in.
bool cuda_backend_built() noexcept;
// CUDA devices this process can use: 0 without the backend, a driver or a GPU.
int cuda_device_count() noexcept;
// A GPU's total memory in bytes; 0 without the backend, a GPU or a driver answer.
uint64_t cuda_device_total_bytes(int device) noexcept;
// A GPU's free memory in bytes now; 0 without the backend, a GPU or a driver answer.
uint64_t cuda_device_free_bytes(int device) noexcept;

// What the CUDA backend's kernels read, in every build (so a machine without a GPU plans the same):
// the stored weight types of its linears, experts and embedding tables, and the KV cache types of
// its attention (GQA rows and MLA latent rows alike). A test holds the weight list to the kernels' own
// dispatch.
bool cuda_weight_type_supported(DType type) noexcept;
bool cuda_kv_type_supported(KvType type) noexcept;

// A backend on GPU `device`. Throws Error(unsupported) when the build has no CUDA backend,
// Error(invalid_argument) naming the devices present when `device` is not one of them.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Prefill tiles of 32+ tokens on the tensor cores multiply in bf16 (true, the default; quantised,
// BF16 and FP8 weights) or float32-accurate 3xTF32 (false); F32 and F16 weights always take 3xTF32.
// true also lets prompt chunks of 64+ tokens over an f16/bf16 cache attend on the tensor cores
// (cuda::flash_gqa_attention). Nothing for other backends.
void cuda_backend_set_prefill_bf16(Backend& backend, bool bf16);
// Decode GEMVs (one token) over Q4_K/Q6_K rows — the linears, the dense MLP and the routed experts
// taken pair by pair — multiply activations quantised to int8 (per 32 values; the experts' SiLU-GLU
// outputs per 8) by dp4a (true) or the float activations (false, the default of a new backend).
// TANDEM_CUDA_Q8_DOT=0/1 in the environment overrides it. Nothing for other backends.
void cuda_backend_set_decode_q8(Backend& backend, bool on);
// A decode token's add + RMSNorm folded into the linears after it (add_rms_norm_linears) in one
// launch (true, the default of a new backend), or the two launches (false; TANDEM_CUDA_FUSED_NORM=0
// in the environment turns it off). Nothing for other backends.
void cuda_backend_set_fused_norm(Backend& backend, bool on);
// A decode token's router matrix and top-k (router_and_topk) in one launch (true; TANDEM_CUDA_FUSED_ROUTER=1
// in the environment turns it on), or two (false, the default of a new backend: one launch measured
// slower). Nothing for other backends.
void cuda_backend_set_fused_router(Backend& backend, bool on);
// A decode token's GQA prologue (q/k head norms, RoPE, the K and V rows into the cache) done by its q,
// k and v projections' int8 launches (gqa_projections; true; TANDEM_CUDA_FUSED_PROLOGUE=1 in the
// environment turns it on), or its own launch after them (false, the default of a new backend: the
// fused form measured slower). Nothing for other backends.
void cuda_backend_set_fused_prologue(Backend& backend, bool on);
// Bytes of weights `backend` holds on its GPU (0 for other backends).
uint64_t cuda_backend_weight_bytes(const Backend& backend);
// Bytes of KV cache `backend` holds on its GPU (0 for other backends).
uint64_t cuda_backend_kv_bytes(const Backend& backend);

}  // namespace tandem
