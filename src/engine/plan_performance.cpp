// tandem plan's speed model: bytes and FLOPs per layer and device over measured or assumed rates.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "tandem/backend/cuda_backend.hpp"
#include "tandem/backend/cuda_expert_layout.hpp"
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
  double host_expert_bytes = 0;          // routed experts in host memory: what a streamed pass copies
  double host_expert_decode_bytes = 0;   // of those, what the CPU reads for one decode token
  double host_expert_flops_per_token = 0;
  bool streamable = false;               // a pass of stream_experts_min_tokens+ computes them on the router's GPU
  bool used[2] = {false, false};
};

// The engine's rule (ForwardPass's can_stream_experts, then the CUDA streamer's table): a MoE layer
// whose routed experts live in host memory and whose router runs on a GPU, the experts alike
// (cuda_experts_alike) and of types the CUDA kernels read.
bool layer_streams_experts(const Weights& weights, const Placement& placement, int64_t layer) {
  const LayerWeights& L = weights.layers[static_cast<size_t>(layer)];
  return L.is_moe && placement.device_for(WeightGroup::experts, layer).kind == DeviceKind::cpu &&
         placement.device_for(WeightGroup::router, layer).kind == DeviceKind::cuda && cuda_experts_alike(L.experts) &&
         cuda_weight_type_supported(L.experts.gate[0].weight.dtype) &&
         cuda_weight_type_supported(L.experts.down[0].weight.dtype);
}

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
        if (d == 0) {
          cost.host_expert_bytes += bytes;
          cost.host_expert_decode_bytes += bytes * expert_share * (1.0 - held);
          cost.host_expert_flops_per_token += flops * expert_share;
        }
        break;
      }
      default:
        cost.decode_bytes[d] += bytes;
        cost.flops_per_token[d] += flops;
        break;
    }
  });
  for (int64_t layer = 0; layer < c.num_layers && static_cast<size_t>(layer) < weights.layers.size(); ++layer)
    costs[static_cast<size_t>(layer + 1)].streamable = layer_streams_experts(weights, placement, layer);
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

struct PrefillPass {
  double tok_s = 0;
  int64_t streamed_layers = 0;
  double streamed_bytes = 0;
};

// One pass of `tokens` tokens after `context_before` tokens already in the cache (attended to by each).
PrefillPass predict_prefill(const ModelConfig& c, const std::vector<LayerCost>& costs, const Placement& placement,
                            const MachineRates& rates, int64_t tokens, int64_t context_before = 0) {
  const double n = static_cast<double>(tokens);
  const double bw[2] = {rates.dram_read_gbps * 1e9, rates.vram_read_gbps * 1e9};
  const double rate[2] = {rates.cpu_gflops * 1e9, rates.gpu_gflops * 1e9};
  const bool streaming = rates.stream_experts_min_tokens > 0 && tokens >= rates.stream_experts_min_tokens &&
                         rates.pcie_gbps > 0;
  PrefillPass pass;
  double seconds = 0;
  for (size_t i = 0; i < costs.size(); ++i) {
    const LayerCost& cost = costs[i];
    const int64_t layer = static_cast<int64_t>(i) - 1;
    // A streamed layer's host experts are copied to the router's GPU and computed there.
    const bool streamed = streaming && cost.streamable && cost.host_expert_bytes > 0;
    const double moved_bytes = streamed ? cost.host_expert_bytes : 0.0;
    const double moved_flops = streamed ? cost.host_expert_flops_per_token : 0.0;
    const double bytes[2] = {cost.weight_bytes[0] - moved_bytes, cost.weight_bytes[1] + moved_bytes};
    const double flops_per_token[2] = {cost.flops_per_token[0] - moved_flops, cost.flops_per_token[1] + moved_flops};
    const bool used[2] = {cost.used[0] && bytes[0] > 0, cost.used[1] || streamed};
    double t = 0;
    for (int d = 0; d < 2; ++d) {
      if (!used[d]) continue;
      double flops = flops_per_token[d] * n + cost.once_flops[d];
      if (layer >= 0 && (placement.device_for(WeightGroup::attention, layer).kind == DeviceKind::cuda) == (d == 1))
        flops += attention_flops_per_token(c, context_before + tokens / 2) * n;  // causal: N/2 keys on average
      double device_seconds = std::max(flops / rate[d], bytes[d] / bw[d]);
      // The next layer's copy runs while this one computes (two VRAM slots): the slower of the two.
      if (d == 1 && streamed)
        device_seconds = std::max(device_seconds, moved_bytes / (streamed_copy_gbps(rates.pcie_gbps) * 1e9));
      t = std::max(t, device_seconds);
    }
    pass.streamed_layers += streamed ? 1 : 0;
    pass.streamed_bytes += moved_bytes;
    seconds += t + (used[0] && used[1] ? kLayerSyncSeconds : 0.0);
  }
  pass.tok_s = seconds > 0 ? n / seconds : 0.0;
  return pass;
}

}  // namespace

double predict_prefill_tok_s(const ModelConfig& c, const Weights& weights, const Placement& placement,
                             const MachineRates& rates, int64_t tokens) {
  check_rates(rates);
  return predict_prefill(c, layer_costs(c, weights, placement), placement, rates, tokens).tok_s;
}

double predict_prompt_prefill_tok_s(const ModelConfig& c, const Weights& weights, const Placement& placement,
                                    const MachineRates& rates, int64_t prompt_tokens, int64_t pass_tokens,
                                    int64_t context_before) {
  check_rates(rates);
  if (prompt_tokens <= 0 || pass_tokens <= 0 || context_before < 0)
    throw Error(ErrorKind::invalid_argument, "plan: a prompt's tokens and its pass size must be positive, its cached context not negative");
  const std::vector<LayerCost> costs = layer_costs(c, weights, placement);
  double seconds = 0;
  for (int64_t done = 0; done < prompt_tokens;) {
    const int64_t n = std::min(pass_tokens, prompt_tokens - done);
    const double tok_s = predict_prefill(c, costs, placement, rates, n, context_before + done).tok_s;
    if (!(tok_s > 0)) return 0.0;
    seconds += static_cast<double>(n) / tok_s;
    done += n;
  }
  return static_cast<double>(prompt_tokens) / seconds;
}

PerformancePrediction predict_performance(const ModelConfig& c, const Weights& weights, const Placement& placement,
                                          const MachineRates& rates, int64_t expert_cache_per_layer,
                                          int64_t defer_experts) {
  check_rates(rates);
  if (defer_experts < 0) throw Error(ErrorKind::invalid_argument, "plan: deferred experts must be 0 or more");
  const std::vector<LayerCost> costs = layer_costs(c, weights, placement, expert_cache_per_layer);
  const double bw[2] = {rates.dram_read_gbps * 1e9, gpu_decode_read_gbps(rates.vram_read_gbps) * 1e9};
  const double staged_bw = gpu_staged_head_read_gbps(rates.vram_read_gbps) * 1e9;
  // Expert deferral: that share of a split layer's routed experts (the engine refuses N ≥ top_k)
  // runs on the CPU while the GPU works on the next layer.
  const double deferred_share = defer_experts > 0 && defer_experts < c.num_experts_per_tok
                                    ? static_cast<double>(defer_experts) / static_cast<double>(c.num_experts_per_tok)
                                    : 0.0;
  PerformancePrediction p;
  double seconds = 0, bytes[2] = {0, 0};
  double waiting = 0;  // the previous layer's deferred experts, on the CPU while this layer's GPU part runs
  for (size_t i = 0; i < costs.size(); ++i) {
    const LayerCost& cost = costs[i];
    const bool transformer_layer = i > 0;  // costs[0]: the embedding, final norm and output head
    double t_device[2] = {0, 0};
    for (int d = 0; d < 2; ++d) {
      bytes[d] += cost.decode_bytes[d];
      p.decode_flops_per_token += cost.flops_per_token[d] + cost.once_flops[d];
      if (!cost.used[d]) continue;
      const double staged = d == 1 ? cost.staged_head_bytes : 0.0;
      t_device[d] = (cost.decode_bytes[d] - staged) / bw[d] + (staged > 0 ? staged / staged_bw : 0.0) +
                    (d == 1 && transformer_layer ? kGpuLayerSeconds : 0.0);
    }
    p.staged_head_bytes += static_cast<uint64_t>(std::llround(cost.staged_head_bytes));
    const bool split = cost.used[0] && cost.used[1];
    p.split_layers += split ? 1 : 0;
    // The model's last layer defers nothing (costs[num_layers]).
    const bool defers = split && deferred_share > 0 && transformer_layer && i + 1 < costs.size();
    const double deferred = defers ? cost.host_expert_decode_bytes * deferred_share / bw[0] : 0.0;
    seconds += std::max(t_device[1], waiting) + t_device[0] - deferred + (split ? kLayerSyncSeconds : 0.0);
    waiting = deferred;  // 0 after the last layer, which defers nothing
  }
  if (!costs.empty() && costs[0].used[1]) seconds += kGpuTokenSeconds;  // the output head on a GPU
  p.decode_bytes_cpu = static_cast<uint64_t>(std::llround(bytes[0]));
  p.decode_bytes_gpu = static_cast<uint64_t>(std::llround(bytes[1]));
  p.decode_tok_s = seconds > 0 ? 1.0 / seconds : 0.0;
  const std::vector<LayerCost> prefill_costs = layer_costs(c, weights, placement);
  const PrefillPass pass_4k = predict_prefill(c, prefill_costs, placement, rates, 4096);
  p.prefill_4k_tok_s = pass_4k.tok_s;
  p.prefill_8k_tok_s = predict_prefill(c, prefill_costs, placement, rates, 8192).tok_s;
  p.prefill_streamed_layers = pass_4k.streamed_layers;
  p.prefill_streamed_bytes = static_cast<uint64_t>(std::llround(pass_4k.streamed_bytes));
  return p;
}

uint64_t streamable_expert_bytes(const Weights& weights, const Placement& placement) {
  uint64_t bytes = 0;
  for (int64_t layer = 0; static_cast<size_t>(layer) < weights.layers.size(); ++layer) {
    if (!layer_streams_experts(weights, placement, layer)) continue;
    const ExpertWeights& e = weights.layers[static_cast<size_t>(layer)].experts;
    for (const auto* list : {&e.gate, &e.up, &e.down})
      for (const LinearWeight& m : *list) bytes += m.weight.nbytes + m.scale_inv.nbytes;
  }
  return bytes;
}

int64_t automatic_stream_experts_min_tokens(uint64_t streamable_bytes, double memory_bytes) {
  if (streamable_bytes == 0 || !(memory_bytes > 0)) return 0;
  return static_cast<double>(streamable_bytes) <= 0.4 * memory_bytes ? kStreamExpertsMinTokens : 0;
}

double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

}  // namespace tandem
