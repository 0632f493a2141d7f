#include "tandem/backend/op_timing_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace tandem {
namespace {
constexpr int64_t kOutputRows = 32768;  // wider than any layer's linear of the supported models
}  // namespace

template <class Fn>
void OpTimingBackend::timed(const char* op, int64_t tokens, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  inner_.synchronize();
  Entry& e = table_[tokens == 0   ? std::string(op)
                   : tokens == 1 ? fmt::format("{} (1 token)", op)
                                 : fmt::format("{} ({} tokens)", op, tokens)];
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++e.calls;
  e.seconds += seconds;
  e.max_seconds = std::max(e.max_seconds, seconds);
}

OpTimingBackend::~OpTimingBackend() {
  if (!table_.empty()) std::fputs(report().c_str(), stderr);
}

std::string OpTimingBackend::report() const {
  std::vector<std::pair<std::string, Entry>> rows(table_.begin(), table_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (const auto& [name, e] : rows) total += e.seconds;
  std::string out = fmt::format("[ops on {}: {:.3f} s in {} kinds of call]\n", label_, total, rows.size());
  for (const auto& [name, e] : rows)
    out += fmt::format("  {:<34} {:>9} calls {:>10.3f} ms {:>9.1f} us/call {:>5.1f} % {:>10.1f} us max\n", name,
                       e.calls, e.seconds * 1e3, e.seconds * 1e6 / static_cast<double>(e.calls),
                       total > 0 ? 100.0 * e.seconds / total : 0.0, e.max_seconds * 1e6);
  return out;
}

void OpTimingBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  timed("copy_to_device", 0, [&] { inner_.copy_to_device(dst, src, bytes); });
}
void OpTimingBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  timed("copy_to_host", 0, [&] { inner_.copy_to_host(dst, src, bytes); });
}
void OpTimingBackend::kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch,
                                const float* rows, int64_t row_stride) {
  timed("kv_append", batch.tokens, [&] { inner_.kv_append(kv, layer, plane, batch, rows, row_stride); });
}
void OpTimingBackend::kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows,
                                     const float* v_rows, int64_t row_stride) {
  timed("kv_append_pair", batch.tokens, [&] { inner_.kv_append_pair(kv, layer, batch, k_rows, v_rows, row_stride); });
}
void OpTimingBackend::embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) {
  timed("embedding", count, [&] { inner_.embedding(table, ids, count, out); });
}
void OpTimingBackend::linear(const LinearWeight& w, const float* x, int64_t rows, float* y) {
  // A vocabulary-wide matrix (the output projection) apart from the layers' linears.
  timed(w.out_features() > kOutputRows ? "linear (output)" : "linear", rows, [&] { inner_.linear(w, x, rows, y); });
}
void OpTimingBackend::linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x,
                              int64_t rows) {
  timed("linears", rows, [&] { inner_.linears(ws, ys, count, x, rows); });
}
void OpTimingBackend::add_rms_norm(float* hidden, const float* delta, const float* weight, int64_t rows,
                                   int64_t dim, double eps, float* out) {
  timed("add_rms_norm", rows, [&] { inner_.add_rms_norm(hidden, delta, weight, rows, dim, eps, out); });
}
void OpTimingBackend::add_rms_norm_linears(float* hidden, const float* delta, const float* norm_weight, int64_t rows,
                                           int64_t dim, double eps, float* normed, const LinearWeight* const* ws,
                                           float* const* ys, int count) {
  timed("add_rms_norm_linears", rows,
        [&] { inner_.add_rms_norm_linears(hidden, delta, norm_weight, rows, dim, eps, normed, ws, ys, count); });
}
void OpTimingBackend::head_norm_rope(const RopeParams& rope, float* data, int64_t rows, int64_t heads,
                                     int64_t head_dim, const float* norm_weight, double eps,
                                     const int64_t* positions) {
  timed("head_norm_rope", rows, [&] { inner_.head_norm_rope(rope, data, rows, heads, head_dim, norm_weight, eps, positions); });
}
void OpTimingBackend::gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v,
                                      const NormFirst& norm, const RopeParams& rope, const GqaHeads& h, KvPool& kv,
                                      int64_t layer, const AttentionBatch& batch) {
  timed("gqa_projections", batch.tokens, [&] { inner_.gqa_projections(q, k, v, norm, rope, h, kv, layer, batch); });
}
void OpTimingBackend::gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                                   const AttentionBatch& batch) {
  timed("gqa_prologue", batch.tokens, [&] { inner_.gqa_prologue(rope, h, kv, layer, batch); });
}
void OpTimingBackend::rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
                               double eps, float* out) {
  timed("rms_norm", rows, [&] { inner_.rms_norm(x, weight, rows, dim, stride, eps, out); });
}
void OpTimingBackend::rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride,
                           int64_t heads, int64_t head_stride, const int64_t* positions) {
  timed("rope", rows, [&] { inner_.rope(rope, data, rows, row_stride, heads, head_stride, positions); });
}
void OpTimingBackend::gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q,
                                    int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                                    float* out) {
  timed("gqa_attention", batch.tokens,
        [&] { inner_.gqa_attention(kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out); });
}
void OpTimingBackend::mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                                    const float* q_latent, const float* q_rope, int64_t heads, int64_t kv_lora,
                                    int64_t rope_dim, float softmax_scale, float* out) {
  timed("mla_attention", batch.tokens, [&] {
    inner_.mla_attention(kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, out);
  });
}
void OpTimingBackend::mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q,
                                       int64_t tokens, float* q_latent) {
  timed("mla_absorb_query", tokens, [&] { inner_.mla_absorb_query(kv_b, shape, q, tokens, q_latent); });
}
void OpTimingBackend::mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended,
                                        int64_t tokens, float* out) {
  timed("mla_expand_values", tokens, [&] { inner_.mla_expand_values(kv_b, shape, attended, tokens, out); });
}
bool OpTimingBackend::mla_prefill_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                                            const LinearWeight& kv_b, const MlaShape& shape, const float* q,
                                            float softmax_scale, float* out) {
  bool done = false;
  timed("mla_prefill_attention", batch.tokens,
        [&] { done = inner_.mla_prefill_attention(kv, layer, batch, kv_b, shape, q, softmax_scale, out); });
  return done;
}
void OpTimingBackend::silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                                   const float* x, int64_t tokens, float* out) {
  timed("silu_glu_mlp", tokens, [&] { inner_.silu_glu_mlp(gate, up, down, x, tokens, out); });
}
void OpTimingBackend::moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens,
                                         int64_t hidden, const int32_t* expert_ids, const float* weights,
                                         int64_t top_k, float* out) {
  timed("moe_routed_experts", tokens,
        [&] { inner_.moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out); });
}
void OpTimingBackend::moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens,
                                                int64_t hidden, const int32_t* expert_ids,
                                                const float* weights, int64_t top_k, float* out) {
  timed("moe_routed_experts", tokens, [&] {
    inner_.moe_routed_experts_submit(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  });
}
bool OpTimingBackend::stream_routed_experts(const ExpertWeights& experts, const ExpertWeights* next, const float* x,
                                            int64_t tokens, int64_t hidden, const int32_t* expert_ids,
                                            const float* weights, int64_t top_k, float* out) {
  bool done = false;
  timed("moe_streamed_experts", tokens, [&] {
    done = inner_.stream_routed_experts(experts, next, x, tokens, hidden, expert_ids, weights, top_k, out);
  });
  return done;
}
void OpTimingBackend::router_and_topk(const RoutingParams& params, const LinearWeight& router, const NormFirst& norm,
                                      int64_t tokens, float* logits, const float* selection_bias, int32_t* expert_ids,
                                      float* weights) {
  timed("router_and_topk", tokens,
        [&] { inner_.router_and_topk(params, router, norm, tokens, logits, selection_bias, expert_ids, weights); });
}
void OpTimingBackend::router_topk(const RoutingParams& params, const float* logits, int64_t tokens,
                                  const float* selection_bias, int32_t* expert_ids, float* weights) {
  timed("router_topk", tokens, [&] { inner_.router_topk(params, logits, tokens, selection_bias, expert_ids, weights); });
}
void OpTimingBackend::split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs,
                                           int32_t* held, int32_t* rest, uint32_t* counts) {
  timed("split_cached_experts", pairs, [&] { inner_.split_cached_experts(experts, ids, pairs, held, rest, counts); });
}
void OpTimingBackend::split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens,
                                             int64_t top_k, int64_t defer, int32_t* kept_ids, float* kept_weights,
                                             int32_t* deferred_ids, float* deferred_weights) {
  timed("split_deferred_experts", tokens, [&] {
    inner_.split_deferred_experts(expert_ids, weights, tokens, top_k, defer, kept_ids, kept_weights, deferred_ids,
                                  deferred_weights);
  });
}
void OpTimingBackend::add(const float* a, const float* b, int64_t count, float* out) {
  timed("add", 0, [&] { inner_.add(a, b, count, out); });
}
void OpTimingBackend::gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) {
  timed("gated_add", rows, [&] { inner_.gated_add(acc, x, gate_logits, rows, width); });
}
void OpTimingBackend::gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count,
                                  int64_t width, float* dst, int64_t dst_stride) {
  timed("gather_rows", count, [&] { inner_.gather_rows(src, src_stride, rows, count, width, dst, dst_stride); });
}

}  // namespace tandem
