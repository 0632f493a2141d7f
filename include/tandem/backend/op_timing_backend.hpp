#pragma once
// OpTimingBackend: a ForwardingBackend that waits for each call to finish (synchronize) and adds its
// wall time to a per-op table, split into single-token calls (decode) and batches (prefill). The
// engine wraps its backends in one when TANDEM_PROFILE_OPS is set and prints the table when it is
// destroyed: a profile of the forward pass where no nsys/perf is at hand. The waits cost time of
// their own (launch gaps are no longer hidden), so the table ranks ops; it does not predict speed.
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "tandem/backend/forwarding_backend.hpp"

namespace tandem {

class OpTimingBackend final : public ForwardingBackend {
 public:
  OpTimingBackend(Backend& inner, std::string label) : ForwardingBackend(inner), label_(std::move(label)) {}
  ~OpTimingBackend() override;

  struct Entry {
    int64_t calls = 0;
    double seconds = 0;
    double max_seconds = 0;  // the slowest call: a first use (loading, growing) shows here
  };
  const std::map<std::string, Entry>& table() const { return table_; }
  std::string report() const;  // one line per op, slowest first

  void copy_to_device(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                 int64_t row_stride) override;
  void kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows, const float* v_rows,
                      int64_t row_stride) override;
  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override;
  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override;
  void linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x, int64_t rows) override;
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override;
  void add_rms_norm(float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim, double eps,
                    float* out) override;
  void add_rms_norm_linears(float* hidden, const float* delta, const float* norm_weight, int64_t rows, int64_t dim,
                            double eps, float* normed, const LinearWeight* const* ws, float* const* ys,
                            int count) override;
  void head_norm_rope(const RopeParams& rope, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                      const float* norm_weight, double eps, const int64_t* positions) override;
  void rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override;
  void gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                    const AttentionBatch& batch) override;
  void gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v, const NormFirst& norm,
                       const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                       const AttentionBatch& batch) override;
  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
                     int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) override;
  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                     float* out) override;
  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q, int64_t tokens,
                        float* q_latent) override;
  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended, int64_t tokens,
                         float* out) override;
  bool mla_prefill_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const LinearWeight& kv_b,
                             const MlaShape& shape, const float* q, float softmax_scale, float* out) override;
  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out) override;
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override;
  // Timed as moe_routed_experts: the timing waits for it, so nothing overlaps while profiling.
  void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                                 const int32_t* expert_ids, const float* weights, int64_t top_k,
                                 float* out) override;
  bool stream_routed_experts(const ExpertWeights& experts, const ExpertWeights* next, const float* x, int64_t tokens,
                                     int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                                     float* out) override;
  void split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs, int32_t* held,
                            int32_t* rest, uint32_t* counts) override;
  void router_and_topk(const RoutingParams& params, const LinearWeight& router, const NormFirst& norm, int64_t tokens,
                       float* logits, const float* selection_bias, int32_t* expert_ids, float* weights) override;
  void router_topk(const RoutingParams& params, const float* logits, int64_t tokens, const float* selection_bias,
                   int32_t* expert_ids, float* weights) override;
  void split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                              int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                              float* deferred_weights) override;
  void add(const float* a, const float* b, int64_t count, float* out) override;
  void gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) override;
  void gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count, int64_t width,
                   float* dst, int64_t dst_stride) override;
  // Timing waits after every call, which a recording cannot hold: the work runs unrecorded.
  std::unique_ptr<BackendGraph> record_graph(const std::function<void()>&) override { return nullptr; }

 private:
  template <class Fn>
  void timed(const char* op, int64_t tokens, Fn&& fn);

  std::string label_;
  std::map<std::string, Entry> table_;
};

}  // namespace tandem
