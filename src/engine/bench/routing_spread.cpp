#include "tandem/engine/bench/routing_spread.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include "tandem/backend/forwarding_backend.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

constexpr int64_t kMaxSpreadTokens = 65536;
constexpr int64_t kChunkTokens = 512;

// Forwards every call to the real backend; notes which experts each MoE call routes to.
class RoutingRecorder final : public ForwardingBackend {
 public:
  RoutingRecorder(Backend& inner, int64_t moe_layers, int64_t experts)
      : ForwardingBackend(inner), hit_(static_cast<size_t>(moe_layers), std::vector<bool>(static_cast<size_t>(experts))) {}

  std::vector<int64_t> hits() const {
    std::vector<int64_t> out;
    for (const auto& layer : hit_) out.push_back(std::count(layer.begin(), layer.end(), true));
    return out;
  }

  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    moe_call_ = 0;  // a forward pass starts: MoE calls count from the first MoE layer again
    inner_.embedding(table, ids, count, out);
  }
  // The ids are read here, so the inner backend must be a host one (the CPU backend is).
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override {
    note(expert_ids, tokens * top_k);
    inner_.moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                                 const int32_t* expert_ids, const float* weights, int64_t top_k,
                                 float* out) override {
    note(expert_ids, tokens * top_k);
    inner_.moe_routed_experts_submit(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }

 private:
  void note(const int32_t* expert_ids, int64_t pairs) {
    if (moe_call_ < hit_.size()) {
      std::vector<bool>& hit = hit_[moe_call_];
      for (int64_t i = 0; i < pairs; ++i)
        if (expert_ids[i] >= 0 && static_cast<size_t>(expert_ids[i]) < hit.size()) hit[static_cast<size_t>(expert_ids[i])] = true;
    }
    ++moe_call_;
  }

  std::vector<std::vector<bool>> hit_;
  size_t moe_call_ = 0;
};

}  // namespace

double RoutingSpread::mean_fraction() const {
  if (experts_hit.empty() || experts <= 0) return 0.0;
  double sum = 0;
  for (int64_t h : experts_hit) sum += static_cast<double>(h) / static_cast<double>(experts);
  return sum / static_cast<double>(experts_hit.size());
}

double RoutingSpread::uniform_fraction(int64_t tokens, int64_t top_k, int64_t experts) {
  if (experts <= 0) return 0.0;
  return 1.0 - std::pow(1.0 - static_cast<double>(top_k) / static_cast<double>(experts), static_cast<double>(tokens));
}

RoutingSpread measure_routing_spread(const ModelFiles& files, int64_t tokens, int threads, uint64_t seed,
                                     CpuKernels kernels) {
  const ModelConfig& c = files.config;
  const int64_t limit = std::min(kMaxSpreadTokens, c.max_position_embeddings > 0 ? c.max_position_embeddings : kMaxSpreadTokens);
  if (tokens < 1 || tokens > limit)
    throw Error(ErrorKind::out_of_range, "routing spread over " + std::to_string(tokens) + " tokens: outside 1.." +
                                             std::to_string(limit) + " (the model's context, at most " +
                                             std::to_string(kMaxSpreadTokens) + ")");
  const Weights weights = bind_weights(files);
  int64_t moe_layers = 0;
  for (const LayerWeights& l : weights.layers) moe_layers += l.is_moe;

  KvPoolSpec spec;
  spec.layout = c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa;
  spec.layers = c.num_layers;
  spec.values_per_token = c.kv_values_per_token_per_layer();
  spec.block_tokens = 16;
  spec.blocks = (tokens + spec.block_tokens - 1) / spec.block_tokens;
  KvPool kv(spec);
  auto cpu = make_cpu_backend(threads, kernels);
  RoutingRecorder recorder(*cpu, moe_layers, c.num_experts);
  ForwardPass forward(c, weights, recorder, kv, std::min(tokens, kChunkTokens));

  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int32_t& id : ids) id = pick(rng);
  BlockTable table;
  table.reserve(kv, tokens);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  for (int64_t at = 0; at < tokens; at += kChunkTokens) {
    const int64_t n = std::min(kChunkTokens, tokens - at);
    const SequenceChunk chunk{std::span<const int32_t>(ids).subspan(static_cast<size_t>(at), static_cast<size_t>(n)), at,
                              &table, false};
    forward.run({&chunk, 1}, logits.data());
  }
  table.release(kv);

  RoutingSpread spread;
  spread.tokens = tokens;
  spread.experts = c.num_experts;
  spread.experts_hit = recorder.hits();
  return spread;
}

}  // namespace tandem
