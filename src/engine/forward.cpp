#include "tandem/engine/forward.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "tandem/backend/backend.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/ops/linear.hpp"
#include "tandem/ops/moe.hpp"
#include "tandem/ops/rope.hpp"
#include "tandem/ops/router.hpp"

namespace tandem {
namespace {

// The small per-layer vectors (norm weights, router bias) as float32, read once at load.
struct LayerVectors {
  std::vector<float> attn_norm, ffn_norm, q_norm, k_norm, q_a_norm, kv_a_norm, router_bias;
};

int64_t widest_intermediate(const Weights& w) {
  int64_t widest = 1;
  for (const auto& layer : w.layers) {
    widest = std::max({widest, layer.ffn_gate.out_features(), layer.shared_gate.out_features()});
    for (const auto& g : layer.experts.gate) widest = std::max(widest, g.out_features());
  }
  return widest;
}

}  // namespace

struct ForwardPass::Impl {
  const ModelConfig& cfg;
  const Weights& w;
  ForwardPass::BackendForRole backend_for;
  std::vector<Backend*> backends;  // the distinct ones, each synchronised at the end of a pass
  KvPool& kv;
  int64_t max_tokens;
  RotaryEmbedding rope;
  RoutingParams routing;
  MlaShape mla;
  float softmax_scale;
  std::vector<LayerVectors> layer_vectors;
  std::vector<float> output_norm;
  FeedForwardWorkspace ffn_ws;

  // Activations [max_tokens, width].
  std::vector<float> hidden, normed, block_out, shared_out, q, k, v, q_a, kv_a, q_latent, q_rope, attended,
      heads_out;
  std::vector<float> router_logits, route_weights, shared_gate;
  RouterScratch router_scratch;
  std::vector<int32_t> ids, expert_ids;
  std::vector<int64_t> positions, slots;
  std::vector<BlockTable*> tables;
  std::vector<float*> attention_rows;
  bool with_attention_rows = false;

  Impl(const ModelConfig& c, const Weights& weights, ForwardPass::BackendForRole route, KvPool& pool,
       int64_t max_batch_tokens)
      : cfg(c),
        w(weights),
        backend_for(std::move(route)),
        kv(pool),
        max_tokens(max_batch_tokens),
        rope(c, c.attention == AttentionKind::mla ? c.qk_rope_head_dim : c.head_dim),
        routing(RoutingParams::from_config(c)),
        mla{c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank},
        softmax_scale(static_cast<float>(c.attention == AttentionKind::mla
                                             ? mla_softmax_scale(c)
                                             : 1.0 / std::sqrt(static_cast<double>(c.head_dim)))),
        ffn_ws(max_batch_tokens, c.hidden_size, widest_intermediate(weights),
               std::max<int64_t>(1, c.num_experts_per_tok), std::max<int64_t>(1, c.num_experts)) {
    for (const auto& l : w.layers)
      layer_vectors.push_back({dequantize_to_vector(l.attn_norm), dequantize_to_vector(l.ffn_norm),
                               dequantize_to_vector(l.q_norm), dequantize_to_vector(l.k_norm),
                               dequantize_to_vector(l.q_a_norm), dequantize_to_vector(l.kv_a_norm),
                               dequantize_to_vector(l.router_bias)});
    output_norm = dequantize_to_vector(w.output_norm);

    const auto T = static_cast<size_t>(max_tokens);
    const auto H = static_cast<size_t>(c.hidden_size);
    auto sized = [T](std::vector<float>& buf, int64_t width) {
      buf.assign(T * static_cast<size_t>(std::max<int64_t>(width, 1)), 0.0f);
    };
    sized(hidden, c.hidden_size);
    sized(normed, c.hidden_size);
    sized(block_out, c.hidden_size);
    sized(shared_out, c.hidden_size);
    if (c.attention == AttentionKind::gqa) {
      sized(q, c.num_heads * c.head_dim);
      sized(k, c.num_kv_heads * c.head_dim);
      sized(v, c.num_kv_heads * c.head_dim);
      sized(heads_out, c.num_heads * c.head_dim);
    } else {
      sized(q, c.num_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim));
      sized(q_a, c.q_lora_rank);
      sized(kv_a, c.kv_lora_rank + c.qk_rope_head_dim);
      sized(q_latent, c.num_heads * c.kv_lora_rank);
      sized(q_rope, c.num_heads * c.qk_rope_head_dim);
      sized(attended, c.num_heads * c.kv_lora_rank);
      sized(heads_out, c.num_heads * c.v_head_dim);
    }
    sized(router_logits, c.num_experts);
    sized(route_weights, c.num_experts_per_tok);
    sized(shared_gate, 1);
    expert_ids.assign(T * static_cast<size_t>(std::max<int64_t>(1, c.num_experts_per_tok)), 0);
    ids.assign(T, 0);
    positions.assign(T, 0);
    slots.assign(T, 0);
    tables.assign(T, nullptr);
    attention_rows.assign(T, nullptr);
    (void)H;
    const auto note = [&](Backend& b) {
      if (std::find(backends.begin(), backends.end(), &b) == backends.end()) backends.push_back(&b);
    };
    for (WeightGroup g : kAllWeightGroups) {
      note(backend_for(g, kNoLayer));
      for (int64_t layer = 0; layer < c.num_layers; ++layer) note(backend_for(g, layer));
    }
  }

  Backend& on(WeightGroup g, int64_t layer) { return backend_for(g, layer); }

  AttentionBatch attention_batch(int64_t T) const {
    return {T, slots.data(), tables.data(), with_attention_rows ? attention_rows.data() : nullptr};
  }

  void attention_gqa(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim;
    on(WeightGroup::attention, layer).linear(L.q, normed.data(), T, q.data());
    on(WeightGroup::attention, layer).linear(L.k, normed.data(), T, k.data());
    on(WeightGroup::attention, layer).linear(L.v, normed.data(), T, v.data());
    if (!V.q_norm.empty())
      on(WeightGroup::attention, layer).rms_norm(q.data(), V.q_norm.data(), T * nh, hd, hd, cfg.rms_norm_eps, q.data());
    if (!V.k_norm.empty())
      on(WeightGroup::attention, layer).rms_norm(k.data(), V.k_norm.data(), T * nkv, hd, hd, cfg.rms_norm_eps, k.data());
    on(WeightGroup::attention, layer).rope(rope, q.data(), T, nh * hd, nh, hd, positions.data());
    on(WeightGroup::attention, layer).rope(rope, k.data(), T, nkv * hd, nkv, hd, positions.data());
    const int64_t kv_width = nkv * hd;
    for (int64_t t = 0; t < T; ++t) {
      BlockTable& table = *tables[static_cast<size_t>(t)];
      const int64_t slot = slots[static_cast<size_t>(t)];
      table.write_row(kv, layer, 0, slot, k.data() + t * kv_width);
      table.write_row(kv, layer, 1, slot, v.data() + t * kv_width);
    }
    const AttentionBatch batch = attention_batch(T);
    on(WeightGroup::attention, layer).gqa_attention(kv, layer, batch, q.data(), nh, nkv, hd, softmax_scale, heads_out.data());
    on(WeightGroup::attention, layer).linear(L.o, heads_out.data(), T, block_out.data());
  }

  void attention_mla(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t nh = mla.heads, q_head = mla.nope + mla.rope, kv_width = mla.kv_lora + mla.rope;
    if (!L.q_a.empty()) {
      on(WeightGroup::attention, layer).linear(L.q_a, normed.data(), T, q_a.data());
      on(WeightGroup::attention, layer).rms_norm(q_a.data(), V.q_a_norm.data(), T, cfg.q_lora_rank, cfg.q_lora_rank, cfg.rms_norm_eps,
                       q_a.data());
      on(WeightGroup::attention, layer).linear(L.q_b, q_a.data(), T, q.data());
    } else {
      on(WeightGroup::attention, layer).linear(L.q, normed.data(), T, q.data());
    }
    on(WeightGroup::attention, layer).linear(L.kv_a, normed.data(), T, kv_a.data());
    on(WeightGroup::attention, layer).rms_norm(kv_a.data(), V.kv_a_norm.data(), T, mla.kv_lora, kv_width, cfg.rms_norm_eps,
                     kv_a.data());
    on(WeightGroup::attention, layer).rope(rope, kv_a.data() + mla.kv_lora, T, kv_width, 1, mla.rope, positions.data());
    on(WeightGroup::attention, layer).rope(rope, q.data() + mla.nope, T, nh * q_head, nh, q_head, positions.data());
    for (int64_t t = 0; t < T; ++t) {
      tables[static_cast<size_t>(t)]->write_row(kv, layer, 0, slots[static_cast<size_t>(t)],
                                                kv_a.data() + t * kv_width);
      for (int64_t h = 0; h < nh; ++h)
        std::copy_n(q.data() + (t * nh + h) * q_head + mla.nope, mla.rope,
                    q_rope.data() + (t * nh + h) * mla.rope);
    }
    on(WeightGroup::attention, layer).mla_absorb_query(L.kv_b, mla, q.data(), T, q_latent.data());
    const AttentionBatch batch = attention_batch(T);
    on(WeightGroup::attention, layer).mla_attention(kv, layer, batch, q_latent.data(), q_rope.data(), nh, mla.kv_lora, mla.rope,
                          softmax_scale, attended.data());
    on(WeightGroup::attention, layer).mla_expand_values(L.kv_b, mla, attended.data(), T, heads_out.data());
    on(WeightGroup::attention, layer).linear(L.o, heads_out.data(), T, block_out.data());
  }

  void feed_forward(int64_t layer, int64_t T) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    const LayerVectors& V = layer_vectors[static_cast<size_t>(layer)];
    const int64_t H = cfg.hidden_size;
    if (!L.is_moe) {
      on(WeightGroup::dense_ffn, layer).silu_glu_mlp(L.ffn_gate, L.ffn_up, L.ffn_down, normed.data(), T, ffn_ws, block_out.data());
      return;
    }
    on(WeightGroup::router, layer).linear(L.router, normed.data(), T, router_logits.data());
    route_tokens_to_experts(routing, router_logits.data(), T,
                            V.router_bias.empty() ? nullptr : V.router_bias.data(), expert_ids.data(),
                            route_weights.data(), router_scratch);
    on(WeightGroup::experts, layer).moe_routed_experts(L.experts, normed.data(), T, H, expert_ids.data(), route_weights.data(),
                               routing.top_k, ffn_ws, block_out.data());
    if (L.shared_gate.empty()) return;
    on(WeightGroup::shared_experts, layer).silu_glu_mlp(L.shared_gate, L.shared_up, L.shared_down, normed.data(), T, ffn_ws,
                         shared_out.data());
    if (!L.shared_expert_gate.empty())
      on(WeightGroup::shared_experts, layer).linear(L.shared_expert_gate, normed.data(), T, shared_gate.data());
    for (int64_t t = 0; t < T; ++t) {
      const float g = L.shared_expert_gate.empty()
                          ? 1.0f
                          : 1.0f / (1.0f + std::exp(-shared_gate[static_cast<size_t>(t)]));
      for (int64_t i = 0; i < H; ++i)
        block_out[static_cast<size_t>(t * H + i)] += g * shared_out[static_cast<size_t>(t * H + i)];
    }
  }

  void add_to_hidden(int64_t T) {
    for (size_t i = 0; i < static_cast<size_t>(T * cfg.hidden_size); ++i) hidden[i] += block_out[i];
  }
};

ForwardPass::ForwardPass(const ModelConfig& config, const Weights& weights, BackendForRole backend_for, KvPool& kv,
                         int64_t max_batch_tokens)
    : impl_(std::make_unique<Impl>(config, weights, std::move(backend_for), kv, max_batch_tokens)) {}

ForwardPass::ForwardPass(const ModelConfig& config, const Weights& weights, Backend& backend, KvPool& kv,
                         int64_t max_batch_tokens)
    : ForwardPass(config, weights, [&backend](WeightGroup, int64_t) -> Backend& { return backend; }, kv,
                  max_batch_tokens) {}

ForwardPass::~ForwardPass() = default;

int64_t ForwardPass::logits_rows(std::span<const SequenceChunk> batch) {
  int64_t rows = 0;
  for (const auto& c : batch)
    rows += c.all_logits ? static_cast<int64_t>(c.ids.size()) : (c.ids.empty() ? 0 : 1);
  return rows;
}

void ForwardPass::run(std::span<const SequenceChunk> batch, float* logits, const std::atomic<bool>* cancel) {
  Impl& m = *impl_;
  const ModelConfig& cfg = m.cfg;
  int64_t T = 0;
  m.with_attention_rows = false;
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
    const int64_t bt = m.kv.spec().block_tokens;
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
      m.ids[static_cast<size_t>(T)] = id;
      m.positions[static_cast<size_t>(T)] = c.start_position + i;
      m.slots[static_cast<size_t>(T)] = start_slot + i;
      m.tables[static_cast<size_t>(T)] = c.table;
      m.attention_rows[static_cast<size_t>(T)] = c.attention_rows ? c.attention_rows + i * (start_slot + n) : nullptr;
      if (c.attention_rows) m.with_attention_rows = true;
      ++T;
    }
  }
  if (T == 0) return;
  const int64_t H = cfg.hidden_size;
  m.on(WeightGroup::embedding, kNoLayer).embedding(m.w.token_embedding, m.ids.data(), T, m.hidden.data());
  for (int64_t layer = 0; layer < cfg.num_layers; ++layer) {
    if (cancel && cancel->load(std::memory_order_relaxed))
      throw Error(ErrorKind::cancelled, "forward pass cancelled");
    const LayerVectors& V = m.layer_vectors[static_cast<size_t>(layer)];
    m.on(WeightGroup::norms, layer).rms_norm(m.hidden.data(), V.attn_norm.data(), T, H, H, cfg.rms_norm_eps, m.normed.data());
    if (cfg.attention == AttentionKind::mla)
      m.attention_mla(layer, T);
    else
      m.attention_gqa(layer, T);
    m.add_to_hidden(T);
    m.on(WeightGroup::norms, layer).rms_norm(m.hidden.data(), V.ffn_norm.data(), T, H, H, cfg.rms_norm_eps, m.normed.data());
    m.feed_forward(layer, T);
    m.add_to_hidden(T);
  }
  if (cancel && cancel->load(std::memory_order_relaxed))
    throw Error(ErrorKind::cancelled, "forward pass cancelled");

  // Only the rows whose logits were asked for go through the final norm and the output matrix.
  int64_t rows = 0, token = 0;
  for (const auto& c : batch) {
    const int64_t n = static_cast<int64_t>(c.ids.size());
    if (n == 0) continue;
    const int64_t first = c.all_logits ? token : token + n - 1;
    for (int64_t t = first; t < token + n; ++t, ++rows)
      std::copy_n(m.hidden.data() + t * H, H, m.normed.data() + rows * H);
    token += n;
  }
  m.on(WeightGroup::norms, kNoLayer).rms_norm(m.normed.data(), m.output_norm.data(), rows, H, H, cfg.rms_norm_eps, m.normed.data());
  // The logits row count may exceed max_tokens' scratch only if every chunk wants all logits,
  // which the token limit above already bounds.
  m.on(WeightGroup::output, kNoLayer).linear(m.w.output, m.normed.data(), rows, logits);
  for (Backend* b : m.backends) b->synchronize();
}

}  // namespace tandem
