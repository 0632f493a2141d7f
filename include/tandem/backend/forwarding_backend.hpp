#pragma once
#include <cstdint>
// ForwardingBackend: passes every call to another backend. Wrappers that watch a forward pass
// (the routing-spread recorder, tests that record which backend ran what) derive from it and
// override the calls they look at. Buffers are the inner backend's (it allocates and frees them).
#include "tandem/backend/backend.hpp"

namespace tandem {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}

  Device device() const override { return inner_.device(); }
  int threads() const override { return inner_.threads(); }
  DeviceBuffer allocate(size_t bytes) override { return inner_.allocate(bytes); }
  DeviceBuffer allocate_host(size_t bytes) override { return inner_.allocate_host(bytes); }
  void free_buffer(void* data, size_t bytes, bool pinned_host) noexcept override {
    inner_.free_buffer(data, bytes, pinned_host);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override { inner_.copy_to_device(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { inner_.copy_to_host(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { inner_.copy(dst, src, bytes); }
  std::unique_ptr<BackendEvent> create_event() override { return inner_.create_event(); }
  void record(BackendEvent& event) override { inner_.record(event); }
  void wait(BackendEvent& event) override { inner_.wait(event); }
  void synchronize() override { inner_.synchronize(); }
  const float* prepare_vector(const TensorView& view) override { return inner_.prepare_vector(view); }
  void prepare(WeightGroup role, const LinearWeight& w) override { inner_.prepare(role, w); }
  void prepare_table(WeightGroup role, const TensorView& table) override { inner_.prepare_table(role, table); }
  void kv_attach(KvPool& kv, int64_t layer) override { inner_.kv_attach(kv, layer); }
  void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                 int64_t row_stride) override {
    inner_.kv_append(kv, layer, plane, batch, rows, row_stride);
  }
  void linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x, int64_t rows) override {
    inner_.linears(ws, ys, count, x, rows);
  }
  void kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows, const float* v_rows,
                      int64_t row_stride) override {
    inner_.kv_append_pair(kv, layer, batch, k_rows, v_rows, row_stride);
  }
  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    inner_.embedding(table, ids, count, out);
  }
  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override { inner_.linear(w, x, rows, y); }
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    inner_.rms_norm(x, weight, rows, dim, stride, eps, out);
  }
  void rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override {
    inner_.rope(rope, data, rows, row_stride, heads, head_stride, positions);
  }
  void add_rms_norm(float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim, double eps,
                    float* out) override {
    inner_.add_rms_norm(hidden, delta, weight, rows, dim, eps, out);
  }
  void add_rms_norm_linears(float* hidden, const float* delta, const float* norm_weight, int64_t rows, int64_t dim,
                            double eps, float* normed, const LinearWeight* const* ws, float* const* ys,
                            int count) override {
    inner_.add_rms_norm_linears(hidden, delta, norm_weight, rows, dim, eps, normed, ws, ys, count);
  }
  void head_norm_rope(const RopeParams& rope, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                      const float* norm_weight, double eps, const int64_t* positions) override {
    inner_.head_norm_rope(rope, data, rows, heads, head_dim, norm_weight, eps, positions);
  }
  void gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v, const NormFirst& norm,
                       const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                       const AttentionBatch& batch) override {
    inner_.gqa_projections(q, k, v, norm, rope, h, kv, layer, batch);
  }
  void gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                    const AttentionBatch& batch) override {
    inner_.gqa_prologue(rope, h, kv, layer, batch);
  }
  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
                     int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) override {
    inner_.gqa_attention(kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out);
  }
  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                     float* out) override {
    inner_.mla_attention(kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, out);
  }
  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q, int64_t tokens,
                        float* q_latent) override {
    inner_.mla_absorb_query(kv_b, shape, q, tokens, q_latent);
  }
  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended, int64_t tokens,
                         float* out) override {
    inner_.mla_expand_values(kv_b, shape, attended, tokens, out);
  }
  bool mla_prefill_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const LinearWeight& kv_b,
                             const MlaShape& shape, const float* q, float softmax_scale, float* out) override {
    return inner_.mla_prefill_attention(kv, layer, batch, kv_b, shape, q, softmax_scale, out);
  }
  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out) override {
    inner_.silu_glu_mlp(gate, up, down, x, tokens, out);
  }
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override {
    inner_.moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                                 const int32_t* expert_ids, const float* weights, int64_t top_k,
                                 float* out) override {
    inner_.moe_routed_experts_submit(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  void prepare_streamed_experts(const ExpertWeights& experts) override { inner_.prepare_streamed_experts(experts); }
  bool stream_routed_experts(const ExpertWeights& experts, const ExpertWeights* next, const float* x, int64_t tokens,
                                     int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                                     float* out) override {
    return inner_.stream_routed_experts(experts, next, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  bool cache_experts(const ExpertWeights& experts, std::span<const int32_t> ids) override {
    return inner_.cache_experts(experts, ids);
  }
  void split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs, int32_t* held,
                            int32_t* rest, uint32_t* counts) override {
    inner_.split_cached_experts(experts, ids, pairs, held, rest, counts);
  }
  void router_and_topk(const RoutingParams& params, const LinearWeight& router, const NormFirst& norm, int64_t tokens,
                       float* logits, const float* selection_bias, int32_t* expert_ids, float* weights) override {
    inner_.router_and_topk(params, router, norm, tokens, logits, selection_bias, expert_ids, weights);
  }
  void router_topk(const RoutingParams& params, const float* logits, int64_t tokens, const float* selection_bias,
                   int32_t* expert_ids, float* weights) override {
    inner_.router_topk(params, logits, tokens, selection_bias, expert_ids, weights);
  }
  void split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                              int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                              float* deferred_weights) override {
    inner_.split_deferred_experts(expert_ids, weights, tokens, top_k, defer, kept_ids, kept_weights, deferred_ids,
                                  deferred_weights);
  }
  void add(const float* a, const float* b, int64_t count, float* out) override { inner_.add(a, b, count, out); }
  void gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) override {
    inner_.gated_add(acc, x, gate_logits, rows, width);
  }
  void gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count, int64_t width,
                   float* dst, int64_t dst_stride) override {
    inner_.gather_rows(src, src_stride, rows, count, width, dst, dst_stride);
  }
  std::unique_ptr<BackendGraph> record_graph(const std::function<void()>& issue) override {
    return inner_.record_graph(issue);
  }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) override {
    inner_.parallel_for(n, fn);
  }

 protected:
  Backend& inner_;
};

}  // namespace tandem
