#pragma once
// Backend: the small interface the forward pass runs on — where its buffers live and the kernels
// it calls. The CPU backend (backend/cpu) implements it now; the CUDA backend of a later issue
// implements the same calls. The engine never includes a backend's internals.
#include <cstdint>
#include <functional>
#include <memory>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/model/weights.hpp"
#include "tandem/ops/attention.hpp"
#include "tandem/ops/mla.hpp"
#include "tandem/tensor/device.hpp"

namespace tandem {

class RotaryEmbedding;
class FeedForwardWorkspace;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual int threads() const = 0;

  // Activations: float32, row-major [rows, width], in this backend's memory.
  virtual void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) = 0;
  virtual void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) = 0;
  virtual void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
                        double eps, float* out) = 0;
  virtual void rope(const RotaryEmbedding& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
                    int64_t head_stride, const int64_t* positions) = 0;
  virtual void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q,
                             int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                             float* out) = 0;
  virtual void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                             const float* q_latent, const float* q_rope, int64_t heads, int64_t kv_lora,
                             int64_t rope_dim, float softmax_scale, float* out) = 0;
  virtual void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q,
                                int64_t tokens, float* q_latent) = 0;
  virtual void mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended,
                                 int64_t tokens, float* out) = 0;
  virtual void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                            const float* x, int64_t tokens, FeedForwardWorkspace& ws, float* out) = 0;
  virtual void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens,
                                  int64_t hidden, const int32_t* expert_ids, const float* weights,
                                  int64_t top_k, FeedForwardWorkspace& ws, float* out) = 0;
  // Runs fn(begin, end) over [0, n) on this backend's workers (host-side loops of the forward).
  virtual void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) = 0;
  virtual void synchronize() = 0;
};

// `threads` <= 0: one per physical core. `kernels`: the fast SIMD kernels or the reference path.
std::unique_ptr<Backend> make_cpu_backend(int threads, CpuKernels kernels = CpuKernels::fast);

}  // namespace tandem
