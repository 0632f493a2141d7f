// The CPU backend: on a hwloc-pinned thread pool, the fast quantised kernels (FastCpuOps) for
// linear layers, MLPs and routed experts whose weight types have one, the reference operators
// from ops/ for the rest (and for everything with CpuKernels::reference).
#include <optional>

#include "backend/cpu/fast_ops.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/ops/linear.hpp"
#include "tandem/ops/moe.hpp"
#include "tandem/ops/norm.hpp"
#include "tandem/ops/rope.hpp"

namespace tandem {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, CpuKernels kernels) : pool_(threads) {
    if (kernels == CpuKernels::fast) fast_.emplace(pool_, kernels::best_isa_level());
  }

  Device device() const override { return Device::cpu(); }
  int threads() const override { return pool_.size(); }

  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    embedding_lookup(table, ids, count, out);
  }
  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override {
    if (fast_ && fast_->supports(w))
      fast_->linear(w, x, rows, y);
    else
      tandem::linear(&pool_, w, x, rows, y);
  }
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    tandem::rms_norm(x, weight, rows, dim, stride, eps, out);
  }
  void rope(const RotaryEmbedding& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override {
    rope.apply(data, rows, row_stride, heads, head_stride, positions);
  }
  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q,
                     int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                     float* out) override {
    tandem::gqa_attention(pool_, kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out);
  }
  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim,
                     float softmax_scale, float* out) override {
    tandem::mla_attention(pool_, kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale,
                          out);
  }
  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q, int64_t tokens,
                        float* q_latent) override {
    tandem::mla_absorb_query(pool_, kv_b, shape, q, tokens, q_latent);
  }
  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended,
                         int64_t tokens, float* out) override {
    tandem::mla_expand_values(pool_, kv_b, shape, attended, tokens, out);
  }
  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, FeedForwardWorkspace& ws, float* out) override {
    if (!(fast_ && fast_->silu_glu_mlp(gate, up, down, x, tokens, out)))
      tandem::silu_glu_mlp(&pool_, gate, up, down, x, tokens, ws, out);
  }
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          FeedForwardWorkspace& ws, float* out) override {
    if (!(fast_ && fast_->moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out)))
      tandem::moe_routed_experts(&pool_, experts, x, tokens, hidden, expert_ids, weights, top_k, ws, out);
  }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) override {
    pool_.parallel_for(n, fn);
  }
  void synchronize() override {}

 private:
  ThreadPool pool_;
  std::optional<FastCpuOps> fast_;  // empty: the reference path only
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, CpuKernels kernels) {
  return std::make_unique<CpuBackend>(threads, kernels);
}

std::string_view cpu_kernels_name(CpuKernels kernels) noexcept {
  return kernels == CpuKernels::fast ? "fast" : "reference";
}

std::optional<CpuKernels> parse_cpu_kernels(std::string_view name) noexcept {
  if (name == "fast") return CpuKernels::fast;
  if (name == "reference") return CpuKernels::reference;
  return std::nullopt;
}

bool cpu_fast_kernel_available(DType type) noexcept { return kernels::weight_kind_for(type).has_value(); }

std::string_view cpu_kernel_isa() noexcept { return kernels::isa_level_name(kernels::best_isa_level()); }

}  // namespace tandem
