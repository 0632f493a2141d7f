#pragma once
// Backend: the small interface the forward pass runs on — where its buffers live, how bytes move
// in and out of them, and the kernels it calls. The CPU backend (backend/cpu) and the CUDA backend
// (cuda/) implement it. The engine never includes a backend's internals.
//
// Memory: activations are float32 row-major [rows, width] (ids int32, positions int64) in buffers
// the backend allocated (DeviceBuffer). Every pointer argument of an op below points into this
// backend's memory, except where a comment says "host". The forward pass never dereferences them.
// Work is ordered on one stream per backend: copies and ops run in call order; synchronize() (or an
// event) is the only point where the host may assume they finished. The CPU backend runs every call
// to completion before returning, except moe_routed_experts_submit, which its workers run while the
// caller goes on (any later call on that backend waits for it first, so the order holds).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/backend/device_buffer.hpp"
#include "tandem/backend/op_params.hpp"
#include "tandem/error.hpp"
#include "tandem/model/weight_roles.hpp"
#include "tandem/model/weights.hpp"
#include "tandem/tensor/device.hpp"

namespace tandem {

class KvPool;

// A point in a backend's stream of work.
class BackendEvent {
 public:
  virtual ~BackendEvent() = default;
  virtual void synchronize() = 0;  // the host waits until the work before the point is done
};

// Work a backend recorded once and runs again as one unit (a CUDA graph): the same kernels with the
// same arguments, reading whatever the buffers hold when it runs.
class BackendGraph {
 public:
  virtual ~BackendGraph() = default;
  // Queues the recorded work on the backend's stream; false (nothing queued) when a buffer the
  // recording used has since been replaced, so the work must be recorded again.
  virtual bool replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual int threads() const = 0;

  // ---- memory, copies, events ----
  // `bytes` of this backend's memory (at least 1 byte is allocated). Error(out_of_memory) naming
  // the bytes when it cannot.
  virtual DeviceBuffer allocate(size_t bytes) = 0;
  // Host memory the device copies from and to fastest (pinned); plain host memory on the CPU.
  virtual DeviceBuffer allocate_host(size_t bytes) = 0;
  // Called by DeviceBuffer only.
  virtual void free_buffer(void* data, size_t bytes, bool pinned_host) noexcept = 0;
  // Asynchronous on the stream. The host side of copy_to_device may be reused once the call
  // returns for pageable memory, once the stream passed the copy for pinned memory; the host side
  // of copy_to_host is filled once the stream passed the copy (synchronize, or an event).
  virtual void copy_to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within this backend's memory
  virtual std::unique_ptr<BackendEvent> create_event() = 0;
  virtual void record(BackendEvent& event) = 0;     // the event marks the work issued so far
  virtual void wait(BackendEvent& event) = 0;       // later work on this stream waits for it
  virtual void synchronize() = 0;                   // the host waits for all work issued so far

  // ---- prepared weights ----
  // A small vector weight (a norm's weight, a router's selection bias) as float32 in this
  // backend's memory, converted once and owned by the backend (cached by the view's bytes, which
  // must stay valid while the backend lives). Null for an empty view.
  virtual const float* prepare_vector(const TensorView& view) = 0;
  // Readies a linear's matrix (bias and FP8 scales with it) or an embedding table, of role group
  // `role`, for this backend's kernels now, at load, instead of at its first use: a GPU uploads it
  // to its memory (counted in its weight bytes). Throws the errors first use would (a stored type
  // without a kernel, out of memory naming the bytes). The CPU backend repacks Q4_K and Q6_K matrices
  // into 16-row strips its kernels read in place of the mapped rows (cpu_backend_repacked_bytes); other
  // types it reads from the mapping as they are. The weight's memory must outlive the backend's use
  // and stay unchanged, or be prepared again after it changed (the copy is found by address).
  virtual void prepare(WeightGroup role, const LinearWeight& w) { (void)role, (void)w; }
  virtual void prepare_table(WeightGroup role, const TensorView& table) { (void)role, (void)table; }

  // ---- the KV cache ----
  // This backend runs attention for `layer` of `kv`: from now on it keeps that layer's data where
  // its kernels read it (the CPU backend: the pool's own host planes; a GPU: planes in its memory
  // with the pool's block ids and layout, copied along when the pool copies a block). The pool
  // stays the bookkeeping (block ids, references, tables). Error(unsupported) for a KV type the
  // backend cannot hold.
  virtual void kv_attach(KvPool& kv, int64_t layer) = 0;
  // Writes row t of `rows` (row_stride floats apart) into the slot batch.positions[t] of token t's
  // sequence, plane `plane` of `layer`, for every token of the batch.
  virtual void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                         int64_t row_stride) = 0;

  // ---- ops ----
  virtual void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) = 0;
  virtual void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) = 0;
  // ys[i] = x · ws[i]ᵀ for `count` matrices of one input (a layer's q, k and v): a GPU may read
  // several in one launch; the default is a call each.
  virtual void linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x, int64_t rows) {
    for (int i = 0; i < count; ++i) linear(*ws[i], x, rows, ys[i]);
  }
  virtual void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
                        double eps, float* out) = 0;
  // Rotates `heads` vectors of each row in place (vector h of row t at data + t·row_stride +
  // h·head_stride) by its position: positions [rows] int64. The backend builds its tables from
  // `rope` once per distinct value (rope_tables).
  virtual void rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
                    int64_t head_stride, const int64_t* positions) = 0;
  // Fused steps a backend may do in one pass over the rows (a GPU: one launch instead of two); the
  // defaults are the two calls. add_rms_norm: hidden += delta (rows·dim values), then out =
  // RMSNorm(hidden) (rows of dim, contiguous). head_norm_rope: each of the `heads` head_dim-wide
  // vectors of a row RMS-normalised by norm_weight (none when null), then rotated by its position.
  virtual void add_rms_norm(float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim,
                            double eps, float* out) {
    add(hidden, delta, rows * dim, hidden);
    rms_norm(hidden, weight, rows, dim, dim, eps, out);
  }
  // add_rms_norm into `normed` (rms_norm of hidden when delta is null), then linears over normed: a
  // GPU may fold the norm into the linears' launch for a decode token.
  virtual void add_rms_norm_linears(float* hidden, const float* delta, const float* norm_weight, int64_t rows,
                                    int64_t dim, double eps, float* normed, const LinearWeight* const* ws,
                                    float* const* ys, int count) {
    if (delta != nullptr)
      add_rms_norm(hidden, delta, norm_weight, rows, dim, eps, normed);
    else
      rms_norm(hidden, norm_weight, rows, dim, dim, eps, normed);
    linears(ws, ys, count, normed, rows);
  }
  // kv_append of K rows into plane 0 and V rows into plane 1 (a GQA layer's two planes).
  virtual void kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows,
                              const float* v_rows, int64_t row_stride) {
    kv_append(kv, layer, 0, batch, k_rows, row_stride);
    kv_append(kv, layer, 1, batch, v_rows, row_stride);
  }
  virtual void head_norm_rope(const RopeParams& rope, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                              const float* norm_weight, double eps, const int64_t* positions) {
    if (norm_weight != nullptr) rms_norm(data, norm_weight, rows * heads, head_dim, head_dim, eps, data);
    this->rope(rope, data, rows, heads * head_dim, heads, head_dim, positions);
  }
  // A GQA layer between its projections and its attention: the heads of batch.tokens rows
  // head_norm_rope'd (GqaHeads), then K and V appended (kv_append_pair). A GPU does it in one launch;
  // the default is the three calls.
  virtual void gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                            const AttentionBatch& batch) {
    head_norm_rope(rope, h.q, batch.tokens, h.heads, h.head_dim, h.q_norm, h.eps, h.positions);
    head_norm_rope(rope, h.k, batch.tokens, h.kv_heads, h.head_dim, h.k_norm, h.eps, h.positions);
    kv_append_pair(kv, layer, batch, h.k, h.v, h.kv_heads * h.head_dim);
  }
  // A GQA layer's projections and prologue: `norm` (NormFirst: applied into norm.normed, or none),
  // q, k and v over norm.normed into h.q, h.k and h.v, then gqa_prologue. A GPU may do a decode
  // token's in the projections' launches.
  virtual void gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v,
                               const NormFirst& norm, const RopeParams& rope, const GqaHeads& h, KvPool& kv,
                               int64_t layer, const AttentionBatch& batch) {
    const LinearWeight* ws[] = {&q, &k, &v};
    float* const ys[] = {h.q, h.k, h.v};
    if (norm.weight != nullptr)
      add_rms_norm_linears(norm.hidden, norm.delta, norm.weight, batch.tokens, norm.dim, norm.eps, norm.normed, ws, ys,
                           3);
    else
      linears(ws, ys, 3, norm.normed, batch.tokens);
    gqa_prologue(rope, h, kv, layer, batch);
  }
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
  // MLA attention of one prompt chunk straight from the unabsorbed q [tokens, heads·(nope + rope)]
  // (rope part rotated) to the heads' values out [tokens, heads·v] — what mla_absorb_query,
  // mla_attention and mla_expand_values give together — in multi-head form (K and V expanded from
  // the latent cache through kv_b), where that is cheaper. Returns false, having done nothing, where
  // the backend has no such path for this batch; the caller then takes the three calls.
  virtual bool mla_prefill_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                                     const LinearWeight& kv_b, const MlaShape& shape, const float* q,
                                     float softmax_scale, float* out) {
    (void)kv, (void)layer, (void)batch, (void)kv_b, (void)shape, (void)q, (void)softmax_scale, (void)out;
    return false;
  }
  virtual void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                            const float* x, int64_t tokens, float* out) = 0;
  // out[t] = Σ_s weights[t, s] · expert ids[t, s] (x[t]); a negative id adds nothing (the expert
  // cache's split hands each backend only its share of the pairs).
  virtual void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens,
                                  int64_t hidden, const int32_t* expert_ids, const float* weights,
                                  int64_t top_k, float* out) = 0;
  // The routed experts, started: the work of moe_routed_experts, returning at once, so that the
  // caller can issue other backends' work (a GPU's shared expert) while it runs. The CPU backend runs
  // it on its workers; a GPU queues it on its stream like any call. x, expert_ids, weights, the
  // workspace and out stay the call's until an event recorded after it (record) is synchronized, or
  // this backend is: only then may the host or another backend read out, or anyone change the inputs.
  virtual void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens,
                                         int64_t hidden, const int32_t* expert_ids, const float* weights,
                                         int64_t top_k, float* out) = 0;
  // The routed experts of a prefill-sized batch, whose weights live in host memory (placed on the
  // CPU), computed on this device after streaming them in (`next`: the next MoE layer's experts,
  // whose copy may start now, or null); inputs and out in this backend's memory. False when this
  // backend cannot (the CPU backend, experts of mixed types, no room for them): nothing was done.
  // Readies `experts` for stream_routed_experts now (at load) rather than on the first streamed
  // pass: the CUDA backend copies them into pinned host memory. Nothing for other backends.
  virtual void prepare_streamed_experts(const ExpertWeights& experts) { (void)experts; }
  virtual bool stream_routed_experts(const ExpertWeights& experts, const ExpertWeights* next, const float* x, int64_t tokens,
                                     int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                                     float* out) {
    (void)experts, (void)next, (void)x, (void)tokens, (void)hidden, (void)expert_ids, (void)weights, (void)top_k,
        (void)out;
    return false;
  }
  // ---- the expert cache: routed experts that live in host memory, some held in this backend's ----
  // Makes `ids` (distinct expert numbers of `experts`) the experts this backend holds for that layer:
  // the first call fixes the capacity (ids.size()) and allocates it; a later call copies in only the
  // experts not yet held. From then on moe_routed_experts over these same `experts` computes the held
  // experts' pairs here (the caller passes ids split by split_cached_experts: only held experts or -1).
  // False when this backend cannot (the CPU: host memory is where the experts are; experts unlike each
  // other in type or shape, or with block scales or biases; no room): nothing is held then.
  virtual bool cache_experts(const ExpertWeights& experts, std::span<const int32_t> ids) {
    (void)experts, (void)ids;
    return false;
  }
  // Splits routed pairs [pairs] by what this backend holds of `experts` (cache_experts): held[p] =
  // ids[p] where that expert is held, else -1; rest[p] = ids[p] where it is not, else -1. With counts
  // (uint32 [experts] in this backend's memory) each pair also adds one to counts[ids[p]]: how often
  // each expert was routed to, which the expert cache chooses by. Error(internal) when nothing is held.
  virtual void split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs, int32_t* held,
                                    int32_t* rest, uint32_t* counts) {
    (void)experts, (void)ids, (void)pairs, (void)held, (void)rest, (void)counts;
    throw Error(ErrorKind::internal, "split_cached_experts: this backend holds no routed experts");
  }
  // Each token's experts from its router logits [tokens, experts], as route_tokens_to_experts
  // (every RouterKind); selection_bias [experts] or null. expert_ids, weights: [tokens, top_k].
  virtual void router_topk(const RoutingParams& params, const float* logits, int64_t tokens,
                           const float* selection_bias, int32_t* expert_ids, float* weights) = 0;
  // A MoE layer's router: `norm` (NormFirst: applied into norm.normed, or none), the router matrix
  // over norm.normed into logits [tokens, experts], then router_topk. A GPU may do the three in one
  // decode launch.
  virtual void router_and_topk(const RoutingParams& params, const LinearWeight& router, const NormFirst& norm,
                               int64_t tokens, float* logits, const float* selection_bias, int32_t* expert_ids,
                               float* weights) {
    const LinearWeight* matrix[] = {&router};
    float* const out[] = {logits};
    if (norm.weight != nullptr)
      add_rms_norm_linears(norm.hidden, norm.delta, norm.weight, tokens, norm.dim, norm.eps, norm.normed, matrix, out, 1);
    else
      linears(matrix, out, 1, norm.normed, tokens);
    router_topk(params, logits, tokens, selection_bias, expert_ids, weights);
  }
  // Expert deferral's split of each token's routing (tandem/backend/cpu/reference/expert_deferral.hpp defines
  // it): of expert_ids/weights [tokens, top_k], the `defer` lowest-weighted go to deferred_* [tokens, defer],
  // the rest, in routing order, to kept_* [tokens, top_k - defer] (ties: the later slot is deferred).
  virtual void split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                                      int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                                      float* deferred_weights) = 0;
  // out[i] = a[i] + b[i] (the residual add; out may be a).
  virtual void add(const float* a, const float* b, int64_t count, float* out) = 0;
  // acc[r, i] += g(r) · x[r, i] for rows [rows, width]; g(r) = sigmoid(gate_logits[r]) when
  // gate_logits is given, else 1 (a shared expert's output, gated as Qwen2-MoE's).
  virtual void gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) = 0;
  // dst[i·dst_stride, +width) = src[r·src_stride, +width) with r = rows[i] (int32), or r = i when
  // rows is null; for i < count. The logits rows of a batch; MLA's rope part of each query head.
  virtual void gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count, int64_t width,
                           float* dst, int64_t dst_stride) = 0;

  // ---- recording ----
  // Records the work `issue` queues on this backend instead of running it. Null when the backend
  // cannot record (the CPU), or when `issue` did something a recording cannot hold (a wait on the
  // host, a new allocation): then none of its work ran, and the caller runs it without recording.
  virtual std::unique_ptr<BackendGraph> record_graph(const std::function<void()>& issue) {
    (void)issue;
    return nullptr;
  }

  // Runs fn(begin, end) over [0, n) on this backend's workers (host-side loops).
  virtual void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) = 0;
};

// `threads` <= 0: one per physical core. `kernels`: the fast SIMD kernels or the reference path.
std::unique_ptr<Backend> make_cpu_backend(int threads, CpuKernels kernels = CpuKernels::fast);
// Bytes of weight copies a CPU backend made in prepare (Q4_K and Q6_K matrices repacked into 16-row
// strips for its fast kernels, and int8 strips where TANDEM_CPU_INT8 asks for them); 0 for other backends.
int64_t cpu_backend_repacked_bytes(const Backend& backend) noexcept;
// Bytes of the copies a CPU backend's prepare(role, w) would make (its kernels' repackable types and
// shapes at its ISA level; an int8 copy only for the roles that get one); 0 for other backends and
// for weights read in place.
int64_t cpu_backend_repack_bytes(const Backend& backend, WeightGroup role, const LinearWeight& w);
// Whether a CPU backend's later prepare calls make int8 copies (default: cpu_int8_enabled); the
// engine turns them off when they alone would break its memory guard. No effect on other backends.
void cpu_backend_set_int8_copies(Backend& backend, bool on);

}  // namespace tandem
