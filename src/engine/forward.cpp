#include "tandem/engine/forward.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <utility>

#include "core/environment.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/op_params.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

// Passes of at most this many tokens are recorded (the CUDA backend's routed experts of larger
// batches group rows by expert on the host, which a recording cannot hold).
constexpr int64_t kRecordedMaxTokens = 16;

// The activation buffers of a pass, [max_tokens, width] each. The main backend (attention's) holds
// the residual stream; every other backend a role group runs on holds its own set, filled by copies.
enum Act : int {
  kHidden, kNormed, kBlockOut, kSharedOut, kQ, kK, kV, kQa, kKva, kQLatent, kQRope, kAttended, kHeadsOut,
  kRouterLogits, kRouteWeights, kSharedGate, kExpertIds, kIds, kPositions, kSlots, kLogitRows,
  // Expert deferral: each token's kept routing, and per deferred part its input rows, routing and
  // output, twice (DeferredSlots: layer L's part waits in one while layer L+1 fills the other).
  kKeptIds, kKeptWeights, kDeferredIn0, kDeferredIds0, kDeferredWeights0, kDeferredOut0, kDeferredIn1,
  kDeferredIds1, kDeferredWeights1, kDeferredOut1,
  // The expert cache: the routed pairs the router's GPU holds the experts of, the rest (for the
  // experts' backend; -1 where the other side has the pair), and the GPU's part of the output.
  kHeldIds, kRestIds, kCachedOut, kActCount
};

struct DeferredSlot {
  Act in, ids, weights, out;
};
constexpr std::array<DeferredSlot, 2> kDeferredSlots = {
    DeferredSlot{kDeferredIn0, kDeferredIds0, kDeferredWeights0, kDeferredOut0},
    DeferredSlot{kDeferredIn1, kDeferredIds1, kDeferredWeights1, kDeferredOut1}};

size_t element_bytes(Act a) {
  switch (a) {
    case kExpertIds: case kIds: case kLogitRows: case kKeptIds: case kDeferredIds0: case kDeferredIds1:
    case kHeldIds: case kRestIds:
      return sizeof(int32_t);
    case kPositions: case kSlots: return sizeof(int64_t);
    default: return sizeof(float);
  }
}

// Per layer, the small vector weights as each backend that reads them prepared them.
struct LayerVectors {
  const float *attn_norm = nullptr, *ffn_norm = nullptr;                                    // norms' backend
  const float *q_norm = nullptr, *k_norm = nullptr, *q_a_norm = nullptr, *kv_a_norm = nullptr;  // attention's
  const float* router_bias = nullptr;                                                       // router's
};

bool on_host(const Backend& b) { return b.device().kind == DeviceKind::cpu; }

// One backend's set of activation buffers.
struct Mirror {
  Backend* backend = nullptr;
  std::array<DeviceBuffer, kActCount> act;
  DeviceBuffer tables;     // flat int32 block tables [tokens, stride], grown to the largest pass
  DeviceBuffer open_rows;  // int32 open-rows slots [tokens] (an int4 cache on a host backend)
  DeviceBuffer logits;  // a device backend's logits rows, grown; host backends write the caller's
  std::unique_ptr<BackendEvent> event;
  // Routed experts submitted here (moe_routed_experts_submit) are done once these are: the layer's
  // kept experts, and each deferred slot's part.
  std::unique_ptr<BackendEvent> experts_done;
  std::array<std::unique_ptr<BackendEvent>, 2> deferred_done;

  float* f(Act a) const { return act[a].as<float>(); }
  int32_t* i32(Act a) const { return act[a].as<int32_t>(); }
  int64_t* i64(Act a) const { return act[a].as<int64_t>(); }
};

}  // namespace

struct ForwardPass::Impl {
  const ModelConfig& cfg;
  const Weights& w;
  ForwardPass::BackendForRole backend_for;
  KvPool& kv;
  int64_t max_tokens;
  RopeParams rope;
  RoutingParams routing;
  MlaShape mla;
  float softmax_scale;
  int64_t defer;  // routed experts per token deferred to the next layer (0: off)
  std::array<int64_t, kActCount> width{};
  std::deque<Mirror> mirrors;  // mirrors[0]: the main backend (a deque: references stay valid)
  std::vector<LayerVectors> layer_vectors;
  const float* output_norm = nullptr;
  DeviceBuffer staging;  // pinned host bytes for copies between two devices
  bool pinned_mirrors = integer_from_environment("TANDEM_PINNED_MIRRORS", 0, 1).value_or(1) == 1;
  // A layer's deferred part: its experts call was issued on the experts' mirror `on` right after the
  // layer's kept experts, its output lands in `slot`.out. Layer L leaves it in `produced`; layer L+1
  // takes it as `waiting` and adds its output after its own feed-forward, waiting for `done` first
  // when it was submitted (the experts apart from the main backend: a host experts backend computes
  // it while a GPU runs layer L+1's attention).
  struct DeferredPart {
    Mirror* on = nullptr;
    DeferredSlot slot{};
    BackendEvent* done = nullptr;  // null: issued in order with the main backend's work
  };
  DeferredPart produced, waiting;

  // The pass's inputs as host data, uploaded to every backend once per pass.
  std::vector<int32_t> ids, logit_rows, flat_tables, open_rows;
  std::vector<int64_t> positions, slots;
  std::vector<const BlockTable*> tables;  // each token's sequence, flattened into flat_tables and open_rows
  std::vector<float*> attention_rows;
  bool with_attention_rows = false;
  bool one_sequence = false;  // this pass's tokens are one chunk of one sequence
  int64_t table_stride = 1, max_context = 1;

  // Recorded passes (CUDA graphs) by shape; an empty optional: seen once, not recorded yet; a null
  // recording: the backend could not record this shape.
  bool record_graphs = true;
  int64_t stream_min_tokens = 0;
  bool any_layer_streams = false;  // some MoE layer's experts can stream (set with stream_min_tokens)
  int64_t replayed_passes = 0;
  int64_t streamed_layers = 0;
  struct Shape {
    int64_t tokens, rows, table_stride;
    auto operator<=>(const Shape&) const = default;
  };
  std::map<Shape, std::optional<std::unique_ptr<BackendGraph>>> recordings;

  // The expert cache, per layer: whether the router's GPU holds some of its experts, which (in the
  // order held), and how often each expert was routed to since the last refresh (uint32 [experts]
  // in the router's memory, counted by split_cached_experts).
  struct CachedLayer {
    bool active = false;
    std::vector<int32_t> held;
    DeviceBuffer counts;
    std::vector<uint32_t> baseline;  // the counts as last uploaded (the pairs before them are tallied)
  };
  std::vector<CachedLayer> cached_layers;
  int64_t cache_per_layer = 0;
  // Pairs counted by every cached layer up to the last refresh, and of them those the GPU held.
  uint64_t counted_pairs = 0, held_pairs = 0;
  int64_t tokens_since_refresh = 0;

  void compute(int64_t T, int64_t rows, float* logits, const std::atomic<bool>* cancel);

  Impl(const ModelConfig& c, const Weights& weights, ForwardPass::BackendForRole route, KvPool& pool,
       int64_t max_batch_tokens, int64_t defer_experts)
      : cfg(c),
        w(weights),
        backend_for(std::move(route)),
        kv(pool),
        max_tokens(max_batch_tokens),
        rope(RopeParams::from_config(c, c.attention == AttentionKind::mla ? c.qk_rope_head_dim : c.head_dim)),
        routing(RoutingParams::from_config(c)),
        mla{c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank},
        softmax_scale(static_cast<float>(c.attention == AttentionKind::mla
                                             ? mla_softmax_scale(c)
                                             : 1.0 / std::sqrt(static_cast<double>(c.head_dim)))),
        defer(defer_experts) {
    const int64_t H = c.hidden_size, k = std::max<int64_t>(1, c.num_experts_per_tok);
    if (defer < 0 || (defer > 0 && defer >= c.num_experts_per_tok))
      throw Error(ErrorKind::invalid_argument,
                  c.num_experts_per_tok <= 1
                      ? fmt::format("--defer-experts {}: the model routes each token to {} expert(s); expert "
                                    "deferral needs at least 2 (use 0)",
                                    defer, std::max<int64_t>(0, c.num_experts_per_tok))
                      : fmt::format("--defer-experts {}: must be within 0..{} (fewer than the {} routed experts per "
                                    "token of this model; 0 = off)",
                                    defer, c.num_experts_per_tok - 1, c.num_experts_per_tok));
    width[kHidden] = width[kNormed] = width[kBlockOut] = width[kSharedOut] = H;
    if (c.attention == AttentionKind::gqa) {
      width[kQ] = width[kHeadsOut] = c.num_heads * c.head_dim;
      width[kK] = width[kV] = c.num_kv_heads * c.head_dim;
    } else {
      width[kQ] = c.num_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim);
      width[kQa] = c.q_lora_rank;
      width[kKva] = c.kv_lora_rank + c.qk_rope_head_dim;
      width[kQLatent] = width[kAttended] = c.num_heads * c.kv_lora_rank;
      width[kQRope] = c.num_heads * c.qk_rope_head_dim;
      width[kHeadsOut] = c.num_heads * c.v_head_dim;
    }
    width[kRouterLogits] = c.num_experts;
    width[kRouteWeights] = width[kExpertIds] = k;
    width[kSharedGate] = width[kIds] = width[kPositions] = width[kSlots] = width[kLogitRows] = 1;
    width[kHeldIds] = width[kRestIds] = k;
    width[kCachedOut] = H;
    if (defer > 0) {  // else these stay 1 value per token
      width[kKeptIds] = width[kKeptWeights] = k - defer;
      for (const DeferredSlot& d : kDeferredSlots) {
        width[d.in] = width[d.out] = H;
        width[d.ids] = width[d.weights] = defer;
      }
    }

    // The main backend first: attention's (of layer 0), where the residual stream lives.
    mirror(c.num_layers > 0 ? backend_for(WeightGroup::attention, 0) : backend_for(WeightGroup::embedding, kNoLayer));
    for (WeightGroup g : kAllWeightGroups) {
      mirror(backend_for(g, kNoLayer));
      for (int64_t layer = 0; layer < c.num_layers; ++layer) mirror(backend_for(g, layer));
    }
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      const LayerWeights& l = w.layers[static_cast<size_t>(layer)];
      Backend& norms = on(WeightGroup::norms, layer);
      Backend& attention = on(WeightGroup::attention, layer);
      LayerVectors v;
      v.attn_norm = norms.prepare_vector(l.attn_norm);
      v.ffn_norm = norms.prepare_vector(l.ffn_norm);
      v.q_norm = attention.prepare_vector(l.q_norm);
      v.k_norm = attention.prepare_vector(l.k_norm);
      v.q_a_norm = attention.prepare_vector(l.q_a_norm);
      v.kv_a_norm = attention.prepare_vector(l.kv_a_norm);
      v.router_bias = on(WeightGroup::router, layer).prepare_vector(l.router_bias);
      layer_vectors.push_back(v);
      attention.kv_attach(kv, layer);
    }
    output_norm = on(WeightGroup::norms, kNoLayer).prepare_vector(w.output_norm);

    size_host_inputs();
  }

  // The per-token host inputs of a pass, max_tokens each.
  void size_host_inputs() {
    const auto T = static_cast<size_t>(max_tokens);
    ids.assign(T, 0);
    logit_rows.assign(T, 0);
    positions.assign(T, 0);
    slots.assign(T, 0);
    tables.assign(T, nullptr);
    open_rows.assign(T, KvPool::kNoOpenRows);
    attention_rows.assign(T, nullptr);
  }
  // A mirror's activation buffers, [max_tokens, width] each (the old ones freed first). A host
  // backend's, in a pass whose main backend is a GPU, may be that GPU's pinned memory: the copies between
  // the two (a hybrid MoE layer's rows down and its output up, every layer) are then queued behind the
  // GPU's work, where pageable memory makes each a staged copy the host waits through (hybrid decode
  // 1.05–1.15× faster with it, docs/PERF.md). TANDEM_PINNED_MIRRORS=0 turns it off; where the GPU
  // cannot pin that much, the buffer stays pageable.
  void allocate_activations(Mirror& m) {
    const bool pinned = pinned_mirrors && !mirrors.empty() && &m != &main() && on_host(*m.backend) &&
                        !on_host(*main().backend);
    for (int a = 0; a < kActCount; ++a) {
      DeviceBuffer& buffer = m.act[static_cast<size_t>(a)];
      buffer = DeviceBuffer();
      const size_t bytes =
          static_cast<size_t>(max_tokens * std::max<int64_t>(1, width[a])) * element_bytes(static_cast<Act>(a));
      if (pinned) try {
          buffer = main().backend->allocate_host(bytes);
          continue;
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::out_of_memory) throw;
        }
      buffer = m.backend->allocate(bytes);
    }
  }

  Backend& on(WeightGroup g, int64_t layer) { return backend_for(g, layer); }
  // A pass of T tokens streams the experts of the layers that can stream them to their router's GPU.
  bool pass_streams(int64_t T) const { return any_layer_streams && stream_min_tokens > 0 && T >= stream_min_tokens; }
  Mirror& main() { return mirrors.front(); }
  // A cached layer's counts as they are now; the pairs counted since they were last uploaded are
  // added to `counted`, and those of experts held now to `held_pairs_out`.
  std::vector<uint32_t> read_counts(int64_t layer, uint64_t& counted, uint64_t& held_pairs_out) {
    const CachedLayer& c = cached_layers[static_cast<size_t>(layer)];
    Backend& router = on(WeightGroup::router, layer);
    std::vector<uint32_t> counts(c.baseline.size());
    router.copy_to_host(counts.data(), c.counts.data(), c.counts.bytes());
    router.synchronize();
    std::vector<char> held(c.baseline.size(), 0);
    for (const int32_t e : c.held) held[static_cast<size_t>(e)] = 1;
    for (size_t e = 0; e < counts.size(); ++e) {
      const uint64_t fresh = counts[e] - c.baseline[e];
      counted += fresh;
      if (held[e]) held_pairs_out += fresh;
    }
    return counts;
  }
  bool cache_active(int64_t layer) const {
    return !cached_layers.empty() && cached_layers[static_cast<size_t>(layer)].active;
  }
  // A MoE layer whose experts live in host memory and whose router runs on a GPU: the layer that
  // GPU can stream the experts in for (Backend::stream_routed_experts), and can cache some of.
  bool can_stream_experts(int64_t layer) {
    return w.layers[static_cast<size_t>(layer)].is_moe && on_host(on(WeightGroup::experts, layer)) &&
           !on_host(on(WeightGroup::router, layer));
  }

  // The mirror of a backend, made (its buffers allocated once) the first time it is asked for.
  Mirror& mirror(Backend& b) {
    for (Mirror& m : mirrors)
      if (m.backend == &b) return m;
    Mirror m;
    m.backend = &b;
    allocate_activations(m);
    m.event = b.create_event();
    m.experts_done = b.create_event();
    for (auto& e : m.deferred_done) e = b.create_event();
    mirrors.push_back(std::move(m));
    return mirrors.back();
  }

  // Moves bytes between two backends' buffers, in order with both backends' work.
  // `wait` false: a device-to-host copy is only queued; the host reads nothing of it until a later
  // transfer from the same backend waits (one wait for several rows sent together).
  void transfer(Mirror& from, const void* src, Mirror& to, void* dst, size_t bytes, bool wait = true) {
    if (&from == &to || bytes == 0) return;
    // Host work is done when its call returns (submitted routed experts: once their event is; the
    // callers wait for it before they move the output).
    if (on_host(*from.backend)) {
      to.backend->copy_to_device(dst, src, bytes);
      return;
    }
    if (on_host(*to.backend)) {
      from.backend->copy_to_host(dst, src, bytes);
      if (wait) {
        from.backend->record(*from.event);
        from.event->synchronize();
      }
      return;
    }
    // Two devices: through pinned host memory.
    if (staging.bytes() < bytes) staging = main().backend->allocate_host(std::max(bytes, 2 * staging.bytes()));
    from.backend->copy_to_host(staging.data(), src, bytes);
    from.backend->record(*from.event);
    from.event->synchronize();
    to.backend->copy_to_device(dst, staging.data(), bytes);
    to.backend->record(*to.event);
    to.event->synchronize();  // before the staging bytes are reused
  }
  size_t act_bytes(Act a, int64_t rows) const {
    return static_cast<size_t>(rows * std::max<int64_t>(1, width[a])) * element_bytes(a);
  }
  // Main's rows of `a` to backend b's buffer, and back.
  Mirror& send(Backend& b, Act a, int64_t rows, bool wait = true) {
    Mirror& m = mirror(b);
    transfer(main(), main().act[a].data(), m, m.act[a].data(), act_bytes(a, rows), wait);
    return m;
  }
  void back(Mirror& m, Act a, int64_t rows) { transfer(m, m.act[a].data(), main(), main().act[a].data(), act_bytes(a, rows)); }

  AttentionBatch attention_batch(const Mirror& m, int64_t T) const {
    AttentionBatch b;
    b.tokens = T;
    b.positions = m.i64(kSlots);
    b.attention_rows = with_attention_rows ? attention_rows.data() : nullptr;
    b.block_tables = m.tables.empty() ? nullptr : m.tables.as<int32_t>();
    b.open_rows = m.open_rows.empty() ? nullptr : m.open_rows.as<int32_t>();
    b.table_stride = table_stride;
    b.max_context = max_context;
    b.one_sequence = one_sequence;
    return b;
  }

  // A norm of kHidden into kNormed left to the linears that read it first (add_rms_norm_linears: a
  // GPU folds it into their launch for a decode token).
  struct PendingNorm {
    const float* weight = nullptr;  // null: none pending
    bool add = false;               // kHidden += kBlockOut first
  };
  PendingNorm pending_norm;

  // kHidden (+= kBlockOut when add) normalised into kNormed for the linears `reader` runs next: left
  // pending for them where the norms and the reader are the main backend (which holds kHidden), else
  // done now. reader null: the next reader is no linears call.
  void norm_for(int64_t layer, const float* weight, bool add, const Backend* reader, int64_t T) {
    if (pending_norm.weight != nullptr) throw Error(ErrorKind::internal, "forward pass: a norm was left unapplied");
    Backend& b = on(WeightGroup::norms, layer);
    if (&b == reader && &mirror(b) == &main()) {
      pending_norm = {weight, add};
    } else if (add) {
      add_to_hidden_and_norm(layer, weight, T);
    } else {
      rms_norm(layer, weight, T);
    }
  }
  // The pending norm for the linears of m's backend to apply (none: they read kNormed as it is).
  NormFirst take_pending_norm(Mirror& m) {
    const PendingNorm n = std::exchange(pending_norm, {});
    NormFirst first;
    first.normed = m.f(kNormed);
    if (n.weight == nullptr) return first;
    first.hidden = m.f(kHidden);
    first.delta = n.add ? m.f(kBlockOut) : nullptr;
    first.weight = n.weight;
    first.dim = cfg.hidden_size;
    first.eps = cfg.rms_norm_eps;
    return first;
  }
  // b.linears over kNormed (m: b's mirror), with the pending norm folded in.
  void normed_linears(Backend& b, Mirror& m, const LinearWeight* const* ws, float* const* ys, int count, int64_t T) {
    const NormFirst n = take_pending_norm(m);
    if (n.weight == nullptr)
      b.linears(ws, ys, count, n.normed, T);
    else
      b.add_rms_norm_linears(n.hidden, n.delta, n.weight, T, n.dim, n.eps, n.normed, ws, ys, count);
  }

  void rms_norm(int64_t layer, const float* weight, int64_t T) {
    Backend& b = on(WeightGroup::norms, layer);
    Mirror& m = send(b, kHidden, T);
    const int64_t H = cfg.hidden_size;
    b.rms_norm(m.f(kHidden), weight, T, H, H, cfg.rms_norm_eps, m.f(kNormed));
    back(m, kNormed, T);
  }

  void attention_gqa(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
    Backend& b = on(WeightGroup::attention, layer);
    Mirror& m = send(b, kNormed, T);
    float *q = m.f(kQ), *k = m.f(kK), *v = m.f(kV);
    const AttentionBatch batch = attention_batch(m, T);
    b.gqa_projections(L.q, L.k, L.v, take_pending_norm(m), rope,
                      GqaHeads{q, k, v, nh, nkv, hd, V.q_norm, V.k_norm, cfg.rms_norm_eps, m.i64(kPositions)}, kv,
                      layer, batch);
    b.gqa_attention(kv, layer, batch, q, nh, nkv, hd, softmax_scale, m.f(kHeadsOut));
    b.linear(L.o, m.f(kHeadsOut), T, m.f(kBlockOut));
    back(m, kBlockOut, T);
  }

  void attention_mla(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t nh = mla.heads, q_head = mla.nope + mla.rope, kv_width = mla.kv_lora + mla.rope;
    Backend& b = on(WeightGroup::attention, layer);
    Mirror& m = send(b, kNormed, T);
    float *q = m.f(kQ), *kv_a = m.f(kKva);
    // The query's first projection and the latent's read the same rows: one call.
    const bool q_lora = !L.q_a.empty();
    const LinearWeight* first[] = {q_lora ? &L.q_a : &L.q, &L.kv_a};
    float* const first_out[] = {q_lora ? m.f(kQa) : q, kv_a};
    normed_linears(b, m, first, first_out, 2, T);
    if (q_lora) {
      b.rms_norm(m.f(kQa), V.q_a_norm, T, cfg.q_lora_rank, cfg.q_lora_rank, cfg.rms_norm_eps, m.f(kQa));
      b.linear(L.q_b, m.f(kQa), T, q);
    }
    b.rms_norm(kv_a, V.kv_a_norm, T, mla.kv_lora, kv_width, cfg.rms_norm_eps, kv_a);
    b.rope(rope, kv_a + mla.kv_lora, T, kv_width, 1, mla.rope, m.i64(kPositions));
    b.rope(rope, q + mla.nope, T, nh * q_head, nh, q_head, m.i64(kPositions));
    const AttentionBatch batch = attention_batch(m, T);
    b.kv_append(kv, layer, 0, batch, kv_a, kv_width);
    if (!b.mla_prefill_attention(kv, layer, batch, L.kv_b, mla, q, softmax_scale, m.f(kHeadsOut))) {
      b.gather_rows(q + mla.nope, q_head, nullptr, T * nh, mla.rope, m.f(kQRope), mla.rope);
      b.mla_absorb_query(L.kv_b, mla, q, T, m.f(kQLatent));
      b.mla_attention(kv, layer, batch, m.f(kQLatent), m.f(kQRope), nh, mla.kv_lora, mla.rope, softmax_scale,
                      m.f(kAttended));
      b.mla_expand_values(L.kv_b, mla, m.f(kAttended), T, m.f(kHeadsOut));
    }
    b.linear(L.o, m.f(kHeadsOut), T, m.f(kBlockOut));
    back(m, kBlockOut, T);
  }

  void feed_forward(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t H = cfg.hidden_size;
    if (!L.is_moe) {
      Backend& b = on(WeightGroup::dense_ffn, layer);
      Mirror& m = send(b, kNormed, T);
      b.silu_glu_mlp(L.ffn_gate, L.ffn_up, L.ffn_down, m.f(kNormed), T, m.f(kBlockOut));
      back(m, kBlockOut, T);
      return;
    }
    // The last layer defers nothing: no later layer would take its deferred part. Nor does a pass that
    // streams: the GPU computes every expert there, so deferral would buy no overlap.
    const bool deferring = defer > 0 && !pass_streams(T) && layer + 1 < cfg.num_layers;
    const DeferredSlot& slot = kDeferredSlots[static_cast<size_t>(layer % 2)];
    const Act ids = deferring ? kKeptIds : kExpertIds, weights = deferring ? kKeptWeights : kRouteWeights;
    const int64_t top_k = deferring ? routing.top_k - defer : routing.top_k;
    Backend& router = on(WeightGroup::router, layer);
    Mirror& r = send(router, kNormed, T);
    router.router_and_topk(routing, L.router, take_pending_norm(r), T, r.f(kRouterLogits), V.router_bias,
                           r.i32(kExpertIds), r.f(kRouteWeights));
    if (deferring) {
      router.split_deferred_experts(r.i32(kExpertIds), r.f(kRouteWeights), T, routing.top_k, defer,
                                    r.i32(kKeptIds), r.f(kKeptWeights), r.i32(slot.ids), r.f(slot.weights));
      for (Act a : {slot.ids, slot.weights})
        transfer(r, r.act[a].data(), main(), main().act[a].data(), act_bytes(a, T), false);
    }
    transfer(r, r.act[ids].data(), main(), main().act[ids].data(), act_bytes(ids, T), false);
    back(r, weights, T);  // waits for all

    // A prefill whose experts live in host memory and whose router runs on a GPU: the GPU streams
    // the layer's experts in and computes them (the next MoE layer's copy starting now).
    Backend& experts = on(WeightGroup::experts, layer);
    if (!deferring && pass_streams(T) && can_stream_experts(layer)) {
      const ExpertWeights* next = nullptr;
      for (int64_t l = layer + 1; l < cfg.num_layers && next == nullptr; ++l)
        if (w.layers[static_cast<size_t>(l)].is_moe) next = &w.layers[static_cast<size_t>(l)].experts;
      if (router.stream_routed_experts(L.experts, next, r.f(kNormed), T, H, r.i32(ids), r.f(weights), top_k,
                                       r.f(kBlockOut))) {
        ++streamed_layers;
        back(r, kBlockOut, T);
        add_shared_expert(layer, T);
        return;
      }
    }
    // The expert cache: the router's GPU computes the pairs of the experts it holds (below, while the
    // experts' backend runs the rest), and counts every pair's expert.
    const bool cached = cache_active(layer);
    const Act host_ids = cached ? kRestIds : ids;
    if (cached) {
      router.split_cached_experts(L.experts, r.i32(ids), T * top_k, r.i32(kHeldIds), r.i32(kRestIds),
                                  cached_layers[static_cast<size_t>(layer)].counts.as<uint32_t>());
      transfer(r, r.act[kRestIds].data(), main(), main().act[kRestIds].data(), act_bytes(kRestIds, T), false);
    }
    // Experts on a backend apart from the main one run while the host issues the shared expert (and
    // the deferred part while it issues the next layer): submitted, waited for where their output
    // is added. On the main backend they are called in order like everything else.
    Mirror& x = send(experts, kNormed, T, false);
    const bool overlap = &x != &main();
    if (deferring) {
      for (Act a : {slot.ids, slot.weights}) send(experts, a, T, false);
      // A submitted part needs rows of its own: the next layer's rows overwrite kNormed while it runs.
      if (overlap)
        transfer(main(), main().act[kNormed].data(), x, x.act[slot.in].data(), act_bytes(kNormed, T), false);
    }
    send(experts, host_ids, T, false);
    send(experts, weights, T);  // waits for all
    if (overlap) {
      experts.moe_routed_experts_submit(L.experts, x.f(kNormed), T, H, x.i32(host_ids), x.f(weights), top_k,
                                        x.f(kBlockOut));
      experts.record(*x.experts_done);
    } else {
      experts.moe_routed_experts(L.experts, x.f(kNormed), T, H, x.i32(host_ids), x.f(weights), top_k,
                                 x.f(kBlockOut));
    }
    if (cached)
      router.moe_routed_experts(L.experts, r.f(kNormed), T, H, r.i32(kHeldIds), r.f(weights), top_k,
                                r.f(kCachedOut));
    if (deferring) {
      BackendEvent* done = nullptr;
      if (overlap) {
        experts.moe_routed_experts_submit(L.experts, x.f(slot.in), T, H, x.i32(slot.ids), x.f(slot.weights),
                                          defer, x.f(slot.out));
        done = x.deferred_done[static_cast<size_t>(layer % 2)].get();
        experts.record(*done);
      } else {
        experts.moe_routed_experts(L.experts, x.f(kNormed), T, H, x.i32(slot.ids), x.f(slot.weights), defer,
                                   x.f(slot.out));
      }
      produced = DeferredPart{&x, slot, done};
    }

    const bool shared_expert = !L.shared_gate.empty(), gated = !L.shared_expert_gate.empty();
    Mirror* s = nullptr;
    if (shared_expert) {
      Backend& shared = on(WeightGroup::shared_experts, layer);
      s = &send(shared, kNormed, T);
      shared.silu_glu_mlp(L.shared_gate, L.shared_up, L.shared_down, s->f(kNormed), T, s->f(kSharedOut));
      if (gated) shared.linear(L.shared_expert_gate, s->f(kNormed), T, s->f(kSharedGate));
    }
    if (overlap) x.experts_done->synchronize();
    back(x, kBlockOut, T);
    if (cached) {
      back(r, kCachedOut, T);
      main().backend->add(main().f(kBlockOut), main().f(kCachedOut), T * H, main().f(kBlockOut));
    }
    if (!shared_expert) return;
    if (gated)
      transfer(*s, s->act[kSharedGate].data(), main(), main().act[kSharedGate].data(),
               act_bytes(kSharedGate, T), false);
    back(*s, kSharedOut, T);  // waits for both
    main().backend->gated_add(main().f(kBlockOut), main().f(kSharedOut), gated ? main().f(kSharedGate) : nullptr, T,
                              H);
  }

  // The layer's shared expert (sigmoid-gated where the model has a gate), added to main's kBlockOut.
  void add_shared_expert(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    if (L.shared_gate.empty()) return;
    const bool gated = !L.shared_expert_gate.empty();
    Backend& shared = on(WeightGroup::shared_experts, layer);
    Mirror& s = send(shared, kNormed, T);
    shared.silu_glu_mlp(L.shared_gate, L.shared_up, L.shared_down, s.f(kNormed), T, s.f(kSharedOut));
    if (gated) {
      shared.linear(L.shared_expert_gate, s.f(kNormed), T, s.f(kSharedGate));
      transfer(s, s.act[kSharedGate].data(), main(), main().act[kSharedGate].data(), act_bytes(kSharedGate, T), false);
    }
    back(s, kSharedOut, T);  // waits for both
    main().backend->gated_add(main().f(kBlockOut), main().f(kSharedOut), gated ? main().f(kSharedGate) : nullptr, T,
                              cfg.hidden_size);
  }

  void add_to_hidden(int64_t T) {
    main().backend->add(main().f(kHidden), main().f(kBlockOut), T * cfg.hidden_size, main().f(kHidden));
  }

  // add_to_hidden, then rms_norm(layer, weight): one fused call where the norms run on the main
  // backend, which holds kHidden.
  void add_to_hidden_and_norm(int64_t layer, const float* weight, int64_t T) {
    Backend& b = on(WeightGroup::norms, layer);
    if (&mirror(b) != &main()) {
      add_to_hidden(T);
      rms_norm(layer, weight, T);
      return;
    }
    b.add_rms_norm(main().f(kHidden), main().f(kBlockOut), weight, T, cfg.hidden_size, cfg.rms_norm_eps,
                   main().f(kNormed));
  }

  // The waiting deferred part joins the residual stream (once it is done, when it was submitted).
  void add_waiting_deferral(int64_t T) {
    if (waiting.on == nullptr) return;
    if (waiting.done != nullptr) waiting.done->synchronize();
    Mirror& from = *waiting.on;
    const Act a = waiting.slot.out;
    transfer(from, from.act[a].data(), main(), main().act[a].data(), act_bytes(a, T));
    main().backend->add(main().f(kHidden), main().f(a), T * cfg.hidden_size, main().f(kHidden));
    waiting = {};
  }

  // The pass's host inputs to every backend's buffers.
  void upload_inputs(int64_t T, int64_t rows) {
    flat_tables.assign(static_cast<size_t>(T * table_stride), 0);
    for (int64_t t = 0; t < T; ++t) {
      const BlockTable& table = *tables[static_cast<size_t>(t)];
      const auto n = std::min<size_t>(table.blocks().size(), static_cast<size_t>(table_stride));
      std::copy_n(table.blocks().begin(), n, flat_tables.begin() + t * table_stride);
      open_rows[static_cast<size_t>(t)] = table.open_rows();
    }
    const bool per_channel = kv.per_channel_plane(0);
    for (Mirror& m : mirrors) {
      Backend& b = *m.backend;
      b.copy_to_device(m.act[kIds].data(), ids.data(), act_bytes(kIds, T));
      b.copy_to_device(m.act[kPositions].data(), positions.data(), act_bytes(kPositions, T));
      b.copy_to_device(m.act[kSlots].data(), slots.data(), act_bytes(kSlots, T));
      b.copy_to_device(m.act[kLogitRows].data(), logit_rows.data(), act_bytes(kLogitRows, rows));
      const size_t bytes = flat_tables.size() * sizeof(int32_t);
      if (m.tables.bytes() < bytes) {
        if (!m.tables.empty()) b.synchronize();  // earlier work may still read the old tables
        m.tables = b.allocate(std::max(bytes, 2 * m.tables.bytes()));
      }
      b.copy_to_device(m.tables.data(), flat_tables.data(), bytes);
      // The open rows are host memory of the pool: only host kernels take their slots.
      if (!per_channel || !on_host(b)) continue;
      const size_t open_bytes = static_cast<size_t>(T) * sizeof(int32_t);
      if (m.open_rows.bytes() < open_bytes) {
        if (!m.open_rows.empty()) b.synchronize();
        m.open_rows = b.allocate(static_cast<size_t>(max_tokens) * sizeof(int32_t));
      }
      b.copy_to_device(m.open_rows.data(), open_rows.data(), open_bytes);
    }
  }
};

ForwardPass::ForwardPass(const ModelConfig& config, const Weights& weights, BackendForRole backend_for, KvPool& kv,
                         int64_t max_batch_tokens, int64_t defer_experts)
    : impl_(std::make_unique<Impl>(config, weights, std::move(backend_for), kv, max_batch_tokens, defer_experts)) {}

ForwardPass::ForwardPass(const ModelConfig& config, const Weights& weights, Backend& backend, KvPool& kv,
                         int64_t max_batch_tokens, int64_t defer_experts)
    : ForwardPass(config, weights, [&backend](WeightGroup, int64_t) -> Backend& { return backend; }, kv,
                  max_batch_tokens, defer_experts) {}

ForwardPass::~ForwardPass() = default;

int64_t ForwardPass::replayed_passes() const { return impl_->replayed_passes; }
int64_t ForwardPass::streamed_expert_layers() const { return impl_->streamed_layers; }
int64_t ForwardPass::stream_experts_min_tokens() const { return impl_->stream_min_tokens; }

void ForwardPass::set_stream_experts_min_tokens(int64_t tokens) {
  impl_->stream_min_tokens = tokens;
  impl_->any_layer_streams = false;
  if (tokens <= 0) return;
  // The layers that will stream get ready now (pinned copies of their experts), not on the first pass.
  for (int64_t layer = 0; layer < impl_->cfg.num_layers; ++layer)
    if (impl_->can_stream_experts(layer)) {
      impl_->on(WeightGroup::router, layer).prepare_streamed_experts(impl_->w.layers[static_cast<size_t>(layer)].experts);
      impl_->any_layer_streams = true;
    }
}

uint64_t ForwardPass::streamable_expert_bytes() const {
  uint64_t bytes = 0;
  for (int64_t layer = 0; layer < impl_->cfg.num_layers; ++layer) {
    if (!impl_->can_stream_experts(layer)) continue;
    const ExpertWeights& e = impl_->w.layers[static_cast<size_t>(layer)].experts;
    for (const auto* list : {&e.gate, &e.up, &e.down})
      for (const LinearWeight& m : *list) bytes += m.weight.nbytes + m.scale_inv.nbytes;
  }
  return bytes;
}

int64_t ForwardPass::set_expert_cache(int64_t experts_per_layer) {
  Impl& m = *impl_;
  if (experts_per_layer < 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("expert cache: {} experts per layer (0 = off)", experts_per_layer));
  if (!m.cached_layers.empty() && experts_per_layer != m.cache_per_layer)
    throw Error(ErrorKind::invalid_argument, "expert cache: its size is set once per forward pass");
  if (experts_per_layer == 0 || !m.cached_layers.empty()) return expert_cache_layers();
  m.cached_layers.clear();
  m.cached_layers.resize(static_cast<size_t>(m.cfg.num_layers));
  m.cache_per_layer = experts_per_layer;
  for (int64_t layer = 0; layer < m.cfg.num_layers; ++layer) {
    if (!m.can_stream_experts(layer)) continue;
    const ExpertWeights& experts = m.w.layers[static_cast<size_t>(layer)].experts;
    const auto count = static_cast<int64_t>(experts.count());
    if (experts_per_layer >= count) continue;  // a whole layer belongs on the GPU by placement
    Impl::CachedLayer& c = m.cached_layers[static_cast<size_t>(layer)];
    // Until something was counted: the lowest numbers.
    c.held.resize(static_cast<size_t>(experts_per_layer));
    for (int64_t i = 0; i < experts_per_layer; ++i) c.held[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    Backend& router = m.on(WeightGroup::router, layer);
    if (!router.cache_experts(experts, c.held)) {
      c.held.clear();
      continue;
    }
    c.baseline.assign(static_cast<size_t>(count), 0);
    c.counts = router.allocate(static_cast<size_t>(count) * sizeof(uint32_t));
    router.copy_to_device(c.counts.data(), c.baseline.data(), c.counts.bytes());
    router.synchronize();
    c.active = true;
  }
  return expert_cache_layers();
}

int64_t ForwardPass::expert_cache_layers() const {
  int64_t n = 0;
  for (const Impl::CachedLayer& c : impl_->cached_layers) n += c.active;
  return n;
}

int64_t ForwardPass::refresh_expert_cache(int64_t min_tokens) {
  Impl& m = *impl_;
  if (expert_cache_layers() == 0 || m.tokens_since_refresh < std::max<int64_t>(1, min_tokens)) return 0;
  m.tokens_since_refresh = 0;
  int64_t copied = 0;
  std::vector<int32_t> order;
  for (int64_t layer = 0; layer < m.cfg.num_layers && !m.cached_layers.empty(); ++layer) {
    Impl::CachedLayer& c = m.cached_layers[static_cast<size_t>(layer)];
    if (!c.active) continue;
    Backend& router = m.on(WeightGroup::router, layer);
    const auto count = static_cast<int64_t>(c.baseline.size());
    std::vector<uint32_t> counts = m.read_counts(layer, m.counted_pairs, m.held_pairs);
    std::vector<char> was_held(static_cast<size_t>(count), 0);
    for (const int32_t e : c.held) was_held[static_cast<size_t>(e)] = 1;
    // The most routed experts; on equal counts the held one stays (no copy), then the lower number.
    order.resize(static_cast<size_t>(count));
    for (int64_t e = 0; e < count; ++e) order[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      const uint32_t ca = counts[static_cast<size_t>(a)], cb = counts[static_cast<size_t>(b)];
      if (ca != cb) return ca > cb;
      return was_held[static_cast<size_t>(a)] > was_held[static_cast<size_t>(b)];
    });
    std::vector<int32_t> next(order.begin(), order.begin() + m.cache_per_layer);
    for (const int32_t e : next) copied += !was_held[static_cast<size_t>(e)];
    if (!std::is_permutation(next.begin(), next.end(), c.held.begin(), c.held.end())) {
      if (!router.cache_experts(m.w.layers[static_cast<size_t>(layer)].experts, next))
        throw Error(ErrorKind::internal, "expert cache: a GPU declined experts it held before");
      c.held = std::move(next);
    }
    // Older traffic counts half from now on, so the choice follows what recent requests route to.
    for (uint32_t& v : counts) v /= 2;
    c.baseline = counts;
    router.copy_to_device(c.counts.data(), counts.data(), c.counts.bytes());
    router.synchronize();
  }
  return copied;
}

ForwardPass::ExpertCacheStats ForwardPass::expert_cache_stats() const {
  Impl& m = *impl_;
  ExpertCacheStats st;
  st.layers = expert_cache_layers();
  st.experts_per_layer = st.layers > 0 ? m.cache_per_layer : 0;
  st.counted_pairs = m.counted_pairs;
  st.held_pairs = m.held_pairs;
  for (int64_t layer = 0; layer < m.cfg.num_layers && !m.cached_layers.empty(); ++layer)
    if (m.cached_layers[static_cast<size_t>(layer)].active) (void)m.read_counts(layer, st.counted_pairs, st.held_pairs);
  return st;
}

void ForwardPass::set_max_batch_tokens(int64_t tokens) {
  Impl& m = *impl_;
  if (tokens <= 0)
    throw Error(ErrorKind::invalid_argument, fmt::format("forward: max_batch_tokens must be positive, not {}", tokens));
  if (tokens == m.max_tokens) return;
  m.recordings.clear();  // they hold the old buffers' addresses
  m.max_tokens = tokens;
  for (Mirror& each : m.mirrors) {
    each.backend->synchronize();  // nothing queued may still use the old buffers
    m.allocate_activations(each);
  }
  m.size_host_inputs();
}

void ForwardPass::set_record_graphs(bool on) {
  impl_->record_graphs = on;
  if (!on) impl_->recordings.clear();
}

int64_t ForwardPass::logits_rows(std::span<const SequenceChunk> batch) {
  int64_t rows = 0;
  for (const auto& c : batch)
    rows += c.all_logits ? static_cast<int64_t>(c.ids.size()) : (c.ids.empty() ? 0 : 1);
  return rows;
}

void ForwardPass::run(std::span<const SequenceChunk> batch, float* logits, const std::atomic<bool>* cancel) {
  Impl& m = *impl_;
  const ModelConfig& cfg = m.cfg;
  int64_t T = 0, rows = 0;
  m.with_attention_rows = false;
  m.one_sequence = batch.size() == 1;
  m.table_stride = 1;
  m.max_context = 1;
  const int64_t bt = m.kv.spec().block_tokens;
  for (const auto& c : batch) {
    if (c.table == nullptr)
      throw Error(ErrorKind::invalid_argument, "forward: a sequence chunk has no block table");
    const int64_t n = static_cast<int64_t>(c.ids.size());
    if (T + n > m.max_tokens)
      throw Error(ErrorKind::out_of_range,
                  fmt::format("forward: batch of {} tokens or more is over max_batch_tokens {}", T + n,
                              m.max_tokens));
    const int64_t start_slot = c.start_slot < 0 ? c.start_position : c.start_slot;
    if (c.start_position < 0 || start_slot > c.start_position ||
        c.table->capacity_tokens(m.kv) < start_slot + n)
      throw Error(ErrorKind::out_of_range, fmt::format("forward: block table holds {} tokens, chunk needs {}",
                                                       c.table->capacity_tokens(m.kv), start_slot + n));
    // The rows written must be this sequence's alone (a shared block is copied first, by the owner
    // of the table: BlockTable::make_writable).
    for (int64_t b = start_slot / bt; n > 0 && b <= (start_slot + n - 1) / bt; ++b)
      if (m.kv.ref_count(c.table->blocks()[static_cast<size_t>(b)]) != 1)
        throw Error(ErrorKind::internal,
                    fmt::format("forward: positions {}..{} fall in a shared KV block; call make_writable first",
                                b * bt, (b + 1) * bt - 1));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = c.ids[static_cast<size_t>(i)];
      if (id < 0 || id >= cfg.vocab_size)
        throw Error(
            ErrorKind::invalid_argument,
            fmt::format("token id {} at index {} is outside the vocabulary [0, {})", id, i, cfg.vocab_size));
      const auto t = static_cast<size_t>(T);
      m.ids[t] = id;
      m.positions[t] = c.start_position + i;
      m.slots[t] = start_slot + i;
      m.tables[t] = c.table;
      m.attention_rows[t] = c.attention_rows ? c.attention_rows + i * (start_slot + n) : nullptr;
      if (c.attention_rows) m.with_attention_rows = true;
      if (c.all_logits || i == n - 1) m.logit_rows[static_cast<size_t>(rows++)] = static_cast<int32_t>(T);
      m.table_stride = std::max(m.table_stride, (start_slot + i) / bt + 1);
      m.max_context = std::max(m.max_context, start_slot + i + 1);
      ++T;
    }
  }
  if (T == 0) return;
  m.tokens_since_refresh += T;
  // A pass that runs wholly on one GPU, with few tokens, is recorded once per shape (tokens, logits
  // rows, block-table width) and replayed as one launch: its kernels' arguments must then hold for
  // every later pass of that shape, so the block tables get a fixed width (the next power of two)
  // and the attention scratch the context that width holds; positions, slots and tables are read
  // from the device buffers, which are refreshed before each replay.
  const bool recordable = m.record_graphs && m.mirrors.size() == 1 && !on_host(*m.main().backend) &&
                          !m.with_attention_rows && T <= kRecordedMaxTokens;
  if (recordable) {
    m.table_stride = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(m.table_stride)));
    m.max_context = m.table_stride * bt;
  }
  m.upload_inputs(T, rows);
  Backend& output = m.on(WeightGroup::output, kNoLayer);
  Mirror& o = m.mirror(output);
  const size_t logits_bytes = static_cast<size_t>(rows * cfg.vocab_size) * sizeof(float);
  if (!on_host(output) && o.logits.bytes() < logits_bytes) {
    output.synchronize();
    o.logits = output.allocate(logits_bytes);
  }
  auto compute = [&](const std::atomic<bool>* stop) { m.compute(T, rows, logits, stop); };
  bool replayed = false;
  if (recordable) {
    const Impl::Shape shape{T, rows, m.table_stride};
    auto [entry, first_pass] = m.recordings.try_emplace(shape, std::nullopt);
    std::optional<std::unique_ptr<BackendGraph>>& recording = entry->second;
    if (!first_pass) {  // the first pass of a shape runs unrecorded: it makes the buffers the shape needs
      replayed = recording.has_value() && *recording && (*recording)->replay();
      const bool stale = recording.has_value() && *recording && !replayed;
      if (!recording.has_value() || stale) {
        if (cancel && cancel->load(std::memory_order_relaxed))
          throw Error(ErrorKind::cancelled, "forward pass cancelled");
        recording = m.main().backend->record_graph([&] { compute(nullptr); });  // null: not recordable
        replayed = *recording && (*recording)->replay();
      }
    }
  }
  if (replayed) {
    ++m.replayed_passes;
  } else {
    try {
      compute(cancel);
    } catch (...) {
      // Submitted routed experts may still run on buffers the next pass writes: let them finish.
      for (Mirror& each : m.mirrors) try {
          each.backend->synchronize();
        } catch (...) {  // the first error is the one to report
        }
      throw;
    }
  }
  if (!on_host(output)) output.copy_to_host(logits, o.logits.data(), logits_bytes);
  for (Mirror& each : m.mirrors) each.backend->synchronize();
}

void ForwardPass::Impl::compute(int64_t T, int64_t rows, float* logits, const std::atomic<bool>* cancel) {
  Impl& m = *this;
  const int64_t H = cfg.hidden_size;
  m.produced = m.waiting = {};  // a cancelled pass may have left them
  m.pending_norm = {};
  Backend& embed = m.on(WeightGroup::embedding, kNoLayer);
  Mirror& e = m.mirror(embed);
  embed.embedding(m.w.token_embedding, e.i32(kIds), T, e.f(kHidden));
  m.back(e, kHidden, T);
  bool normed = false;  // kNormed already holds this layer's attention norm (fused with the last add)
  for (int64_t layer = 0; layer < cfg.num_layers; ++layer) {
    if (cancel && cancel->load(std::memory_order_relaxed))
      throw Error(ErrorKind::cancelled, "forward pass cancelled");
    const LayerVectors& V = m.layer_vectors[static_cast<size_t>(layer)];
    if (!std::exchange(normed, false))
      m.norm_for(layer, V.attn_norm, false, &m.on(WeightGroup::attention, layer), T);
    if (cfg.attention == AttentionKind::mla)
      m.attention_mla(layer, T);
    else
      m.attention_gqa(layer, T);
    const bool moe = m.w.layers[static_cast<size_t>(layer)].is_moe;
    m.norm_for(layer, V.ffn_norm, true, moe ? &m.on(WeightGroup::router, layer) : nullptr, T);
    m.waiting = std::exchange(m.produced, {});  // the previous layer's deferred part, if any
    m.feed_forward(layer, T);
    if (m.waiting.on == nullptr && layer + 1 < cfg.num_layers) {
      m.norm_for(layer + 1, m.layer_vectors[static_cast<size_t>(layer + 1)].attn_norm, true,
                 &m.on(WeightGroup::attention, layer + 1), T);
      normed = true;
    } else {
      m.add_to_hidden(T);
      m.add_waiting_deferral(T);
    }
  }
  m.waiting = std::exchange(m.produced, {});  // none: the last layer defers nothing
  m.add_waiting_deferral(T);
  if (cancel && cancel->load(std::memory_order_relaxed))
    throw Error(ErrorKind::cancelled, "forward pass cancelled");

  // Only the rows whose logits were asked for go through the final norm and the output matrix.
  Mirror& main = m.main();
  main.backend->gather_rows(main.f(kHidden), H, main.i32(kLogitRows), rows, H, main.f(kNormed), H);
  Backend& norm = m.on(WeightGroup::norms, kNoLayer);
  Mirror& nm = m.send(norm, kNormed, rows);
  norm.rms_norm(nm.f(kNormed), m.output_norm, rows, H, H, cfg.rms_norm_eps, nm.f(kNormed));
  m.back(nm, kNormed, rows);
  Backend& output = m.on(WeightGroup::output, kNoLayer);
  Mirror& o = m.send(output, kNormed, rows);
  output.linear(m.w.output, o.f(kNormed), rows, on_host(output) ? logits : o.logits.as<float>());
}

}  // namespace tandem
