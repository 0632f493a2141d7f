// tandem plan's speed model: bytes and FLOPs per layer and device over measured or assumed rates.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include "tandem/backend/cuda_q6k_staging.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/error.hpp"
#include "tandem/model/weight_roles.hpp"

namespace tandem {
namespace {

// Per layer (index 0 = the roles outside layers) and device kind (0 = CPU, 1 = GPU).
struct LayerCost {
  double decode_bytes[2] = {0, 0};
  double weight_bytes[2] = {0, 0};       // every byte, for prefill (each weight read once per pass)
  double flops_per_token[2] = {0, 0};    // 2 × elements, routed experts scaled by top_k/num_experts
  double once_flops[2] = {0, 0};         // per pass: the output head's one row of logits
  double staged_head_bytes = 0;          // GPU decode bytes read at the staged head's rate
  bool used[2] = {false, false};
};

std::vector<LayerCost> layer_costs(const ModelConfig& c, const Weights& weights, const Placement& placement,
                                   int64_t expert_cache_per_layer = 0) {
  std::vector<LayerCost> costs(static_cast<size_t>(c.num_layers + 1));
  const double expert_share =
      c.num_experts > 0 ? static_cast<double>(c.num_experts_per_tok) / static_cast<double>(c.num_experts) : 1.0;
  // A tied output head views the embedding's bytes: counted again as the output, whose reads differ.
  std::set<std::tuple<const void*, uint64_t, WeightGroup>> seen;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole role) {
    if (v.empty() || !seen.insert({v.data, v.nbytes, g}).second) return;
    LayerCost& cost = costs[static_cast<size_t>(layer + 1)];
    const int d = placement.device_for(g, layer).kind == DeviceKind::cuda ? 1 : 0;
    const auto bytes = static_cast<double>(v.nbytes);
    const double flops = role == TensorRole::parameter ? 2.0 * static_cast<double>(v.shape.elements()) : 0.0;
    cost.used[d] = true;
    cost.weight_bytes[d] += bytes;
    switch (g) {
      case WeightGroup::embedding:  // a lookup: one row per token
        cost.decode_bytes[d] += v.shape.rank > 0 && v.shape[0] > 0 ? bytes / static_cast<double>(v.shape[0]) : bytes;
        break;
      case WeightGroup::output:
        cost.decode_bytes[d] += bytes;
        cost.once_flops[d] += flops;
        if (d == 1 && gpu_head_staged(v)) cost.staged_head_bytes += bytes;
        break;
      case WeightGroup::experts: {
        // The GPU expert cache takes its share of a host layer's pairs (at least held/experts; more
        // where routing is skewed).
        const LayerWeights& L = weights.layers[static_cast<size_t>(std::max<int64_t>(layer, 0))];
        const double held =
            d == 0 && layer >= 0 && expert_cache_per_layer > 0 && L.experts.count() > 0 &&
                    placement.device_for(WeightGroup::router, layer).kind == DeviceKind::cuda
                ? std::min(1.0, static_cast<double>(expert_cache_per_layer) / static_cast<double>(L.experts.count()))
                : 0.0;
        cost.decode_bytes[0] += d == 0 ? bytes * expert_share * (1.0 - held) : 0.0;
        cost.decode_bytes[1] += d == 1 ? bytes * expert_share : bytes * expert_share * held;
        cost.flops_per_token[d] += flops * expert_share;
        break;
      }
      default:
        cost.decode_bytes[d] += bytes;
        cost.flops_per_token[d] += flops;
        break;
    }
  });
  return costs;
}

}  // namespace

bool gpu_head_staged(const TensorView& head) {
  return head.dtype == DType::q6_k && head.shape.rank == 2 &&
         cuda_q6k_rows_staged(head.shape.rows(), static_cast<int64_t>(head.row_stride_bytes()));
}

namespace {

double attention_flops_per_token(const ModelConfig& c, int64_t context) {
  const bool mla = c.attention == AttentionKind::mla;
  const double qk = mla ? static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim) : static_cast<double>(c.head_dim);
  const double v = mla ? static_cast<double>(c.kv_lora_rank) : static_cast<double>(c.head_dim);
  return 2.0 * static_cast<double>(c.num_heads) * (qk + v) * static_cast<double>(context);
}

void check_rates(const MachineRates& r) {
  if (!(r.dram_read_gbps > 0) || !(r.cpu_gflops > 0) || (r.gpu_present && (!(r.vram_read_gbps > 0) || !(r.gpu_gflops > 0))))
    throw Error(ErrorKind::invalid_argument, "plan: bandwidths and compute rates must be positive");
}

}  // namespace

double predict_prefill_tok_s(const ModelConfig& c, const Weights& weights, const Placement& placement,
                             const MachineRates& rates, int64_t tokens) {
  check_rates(rates);
  const std::vector<LayerCost> costs = layer_costs(c, weights, placement);
  const double n = static_cast<double>(tokens);
  const double bw[2] = {rates.dram_read_gbps * 1e9, rates.vram_read_gbps * 1e9};
  const double rate[2] = {rates.cpu_gflops * 1e9, rates.gpu_gflops * 1e9};
  double seconds = 0;
  for (size_t i = 0; i < costs.size(); ++i) {
    const LayerCost& cost = costs[i];
    const int64_t layer = static_cast<int64_t>(i) - 1;
    double t = 0;
    for (int d = 0; d < 2; ++d) {
      if (!cost.used[d]) continue;
      double flops = cost.flops_per_token[d] * n + cost.once_flops[d];
      if (layer >= 0 && (placement.device_for(WeightGroup::attention, layer).kind == DeviceKind::cuda) == (d == 1))
        flops += attention_flops_per_token(c, tokens / 2) * n;  // causal: a row sees N/2 keys on average
      t = std::max(t, std::max(flops / rate[d], cost.weight_bytes[d] / bw[d]));
    }
    seconds += t + (cost.used[0] && cost.used[1] ? kLayerSyncSeconds : 0.0);
  }
  return seconds > 0 ? n / seconds : 0.0;
}

PerformancePrediction predict_performance(const ModelConfig& c, const Weights& weights, const Placement& placement,
                                          const MachineRates& rates, int64_t expert_cache_per_layer) {
  check_rates(rates);
  const std::vector<LayerCost> costs = layer_costs(c, weights, placement, expert_cache_per_layer);
  const double bw[2] = {rates.dram_read_gbps * 1e9, gpu_decode_read_gbps(rates.vram_read_gbps) * 1e9};
  const double staged_bw = gpu_staged_head_read_gbps(rates.vram_read_gbps) * 1e9;
  PerformancePrediction p;
  double seconds = 0, bytes[2] = {0, 0};
  for (size_t i = 0; i < costs.size(); ++i) {
    const LayerCost& cost = costs[i];
    const bool transformer_layer = i > 0;  // costs[0]: the embedding, final norm and output head
    double t = 0;
    for (int d = 0; d < 2; ++d) {
      bytes[d] += cost.decode_bytes[d];
      p.decode_flops_per_token += cost.flops_per_token[d] + cost.once_flops[d];
      if (!cost.used[d]) continue;
      const double staged = d == 1 ? cost.staged_head_bytes : 0.0;
      t += (cost.decode_bytes[d] - staged) / bw[d] + (staged > 0 ? staged / staged_bw : 0.0) +
           (d == 1 && transformer_layer ? kGpuLayerSeconds : 0.0);
    }
    p.staged_head_bytes += static_cast<uint64_t>(std::llround(cost.staged_head_bytes));
    const bool split = cost.used[0] && cost.used[1];
    p.split_layers += split ? 1 : 0;
    seconds += t + (split ? kLayerSyncSeconds : 0.0);
  }
  if (!costs.empty() && costs[0].used[1]) seconds += kGpuTokenSeconds;  // the output head on a GPU
  p.decode_bytes_cpu = static_cast<uint64_t>(std::llround(bytes[0]));
  p.decode_bytes_gpu = static_cast<uint64_t>(std::llround(bytes[1]));
  p.decode_tok_s = seconds > 0 ? 1.0 / seconds : 0.0;
  p.prefill_4k_tok_s = predict_prefill_tok_s(c, weights, placement, rates, 4096);
  p.prefill_8k_tok_s = predict_prefill_tok_s(c, weights, placement, rates, 8192);
  return p;
}

}  // namespace tandem
