// The placement planner: rules from the user and the shorthands, then a VRAM budget filled with
// routed experts layer by layer, and the table of what went where.
#include "tandem/engine/placement_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "tandem/backend/cuda_backend.hpp"
#include "tandem/backend/cuda_working_memory.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"

namespace tandem {
namespace {

constexpr int64_t kPlanKvBlockTokens = 16;

std::string gib(uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  return bytes >= (uint64_t{1} << 30) ? fmt::format("{:.2f} GiB", b / (1 << 30)) : fmt::format("{:.1f} MiB", b / (1 << 20));
}

// Bytes of each routed-expert layer, each tensor counted once.
std::vector<uint64_t> expert_bytes_per_layer(const Weights& weights, int64_t layers) {
  std::vector<uint64_t> out(static_cast<size_t>(std::max<int64_t>(layers, 0)), 0);
  std::set<std::pair<const void*, uint64_t>> seen;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
    if (g != WeightGroup::experts || v.empty() || layer < 0 || layer >= layers) return;
    if (seen.insert({v.data, v.nbytes}).second) out[static_cast<size_t>(layer)] += v.nbytes;
  });
  return out;
}

uint64_t gpu_weight_bytes(const Weights& weights, const Placement& placement) {
  uint64_t total = 0;
  for (const PlacedBytes& p : place_weights(weights, placement))
    if (p.device.kind == DeviceKind::cuda) total += p.bytes;
  return total;
}

}  // namespace

uint64_t vram_total_bytes(const PlacementFlags& flags) {
  if (flags.vram_total_bytes > 0) return flags.vram_total_bytes;
  return cuda_device_count() > 0 ? cuda_device_total_bytes(0) : 0;
}

uint64_t planned_kv_pool_bytes(const ModelConfig& c, const PlanRequest& r) {
  const int64_t blocks_per_session = (r.context_tokens + kPlanKvBlockTokens - 1) / kPlanKvBlockTokens;
  // One row holding a token's values of one layer (quantised types: codes plus their scales).
  return static_cast<uint64_t>(r.max_sessions * blocks_per_session * kPlanKvBlockTokens * c.num_layers) *
         kv_row_bytes(r.kv_type, c.kv_values_per_token_per_layer());
}

uint64_t planned_buffer_bytes(const ModelConfig& c, int64_t max_batch_tokens) {
  const int64_t q_width = c.num_heads * std::max(c.head_dim, c.qk_nope_head_dim + c.qk_rope_head_dim);
  const int64_t kv_width = std::max(2 * c.num_kv_heads * c.head_dim, c.num_heads * (c.qk_nope_head_dim + c.v_head_dim));
  const int64_t ffn_width =
      std::max({c.intermediate_size, c.moe_intermediate_size * std::max<int64_t>(c.num_experts_per_tok, 1),
                c.shared_expert_intermediate_size, c.moe_intermediate_size * c.num_shared_experts});
  const int64_t floats_per_row = 4 * c.hidden_size + q_width + kv_width + 3 * ffn_width + c.vocab_size;
  return static_cast<uint64_t>(max_batch_tokens * floats_per_row) * sizeof(float);
}

namespace {

// The routed experts' scratch at one pass of `tokens`: the cuBLAS path's layout from 64 pairs per expert
// on, below it the grouped tiles' layout.
uint64_t expert_scratch_bytes(const ModelConfig& c, int64_t tokens) {
  const int64_t experts = c.num_experts, inter = c.moe_intermediate_size, hidden = c.hidden_size;
  const int64_t top_k = std::max<int64_t>(c.num_experts_per_tok, 1), pairs = tokens * top_k;
  if (experts <= 0 || inter <= 0) return 0;
  if (pairs >= kCudaBlasMoePairsPerExpert * experts)
    return static_cast<uint64_t>(cuda_moe_blas_layout(experts, inter, tokens, hidden, top_k).total);
  return static_cast<uint64_t>(cuda_moe_grouped_layout(experts, inter, tokens, hidden, top_k).total);
}

}  // namespace

uint64_t planned_cuda_working_bytes(const ModelConfig& c, const Weights& weights, const Placement& placement,
                                    int64_t max_batch_tokens, int64_t stream_experts_min_tokens) {
  if (placement.device_for(WeightGroup::attention, 0).kind != DeviceKind::cuda) return 0;
  const int64_t tokens = std::max<int64_t>(max_batch_tokens, 1);
  uint64_t total = 0;
  if (tokens >= kCudaBlasMinRows) {
    int64_t widest_values = 0, widest_in = 0;
    for_each_weight(weights, [&](WeightGroup g, int64_t layer, auto&&... item) {
      if constexpr (sizeof...(item) == 1) {
        const LinearWeight& w = (item, ...);
        if (g == WeightGroup::experts || w.empty() || w.weight.shape.rank != 2 ||
            placement.device_for(g, layer).kind != DeviceKind::cuda)
          return;
        const int64_t values = w.weight.shape[0] * w.weight.shape[1];
        if (values > kCudaBlasMaxWeightValues) return;
        widest_values = std::max(widest_values, values);
        widest_in = std::max(widest_in, w.weight.shape[1]);
      }
    });
    total += static_cast<uint64_t>(widest_values * 2 + tokens * widest_in * 2);
  }
  bool resident = false, streamed = false;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (static_cast<size_t>(l) >= weights.layers.size() || !weights.layers[static_cast<size_t>(l)].is_moe) continue;
    if (placement.device_for(WeightGroup::experts, l).kind == DeviceKind::cuda)
      resident = true;
    else if (placement.device_for(WeightGroup::router, l).kind == DeviceKind::cuda && stream_experts_min_tokens > 0 &&
             tokens >= stream_experts_min_tokens)
      streamed = true;
  }
  if (resident || streamed) total += expert_scratch_bytes(c, tokens);
  if (streamed) {
    const std::vector<uint64_t> per_layer = expert_bytes_per_layer(weights, c.num_layers);
    total += 2 * (per_layer.empty() ? 0 : *std::max_element(per_layer.begin(), per_layer.end()));
  }
  return total;
}

namespace {

// Why the automatic hybrid defaults cannot serve this load ("" = they can): the CPU's attention is
// needed, a KV or weight type they would put on the GPU has no CUDA kernel, or they do not fit.
std::string gpu_defaults_blocker(const Weights& weights, const PlanRequest& request,
                                 const PlacementPlan& plan) {
  if (!request.cpu_attention_reason.empty()) return request.cpu_attention_reason;
  if (!cuda_kv_type_supported(request.kv_type))
    return fmt::format("--kv-type {} has no CUDA attention kernel yet", kv_type_name(request.kv_type));
  std::string weight_type;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
    if (!weight_type.empty() || v.empty() || g == WeightGroup::norms) return;
    const PlacementRule& r = plan.placement.rule_for(g, layer);
    if (r.from_defaults && r.device.kind == DeviceKind::cuda && !cuda_weight_type_supported(v.dtype))
      weight_type = fmt::format("the {} weights include {} tensors, which the CUDA backend cannot read yet",
                                weight_group_display_name(g), dtype_name(v.dtype));
  });
  if (!weight_type.empty()) return weight_type;
  // A card given with --vram-total is the one planned for, whatever this machine has.
  const uint64_t free = request.flags.vram_total_bytes > 0 ? request.flags.vram_total_bytes
                        : cuda_device_count() > 0         ? cuda_device_free_bytes(0)
                                                          : plan.vram_total_bytes;
  if (free > 0 && plan.vram_bytes > free)
    return fmt::format("they need {} on cuda:0 (context {} x {} sessions), more than its {} free", gib(plan.vram_bytes),
                       request.context_tokens, request.max_sessions, gib(free));
  return "";
}

PlacementPlan plan_with_defaults(const ModelFiles& files, const Weights& weights, const PlanRequest& request,
                                 bool gpu_defaults);

}  // namespace

PlacementPlan plan_placement(const ModelFiles& files, const Weights& weights, const PlanRequest& request) {
  const bool asked = request.flags.wants_gpu_defaults();
  const bool automatic = request.gpu_available && request.gpu_by_default && !asked;
  PlacementPlan plan = plan_with_defaults(files, weights, request, request.gpu_available && (asked || automatic));
  if (!automatic) return plan;
  std::string blocker = gpu_defaults_blocker(weights, request, plan);
  if (blocker.empty()) return plan;
  plan = plan_with_defaults(files, weights, request, false);
  plan.gpu_defaults_declined = std::move(blocker);
  return plan;
}

namespace {

// The expert cache within `bytes`: the same number of experts in each MoE layer whose experts stay
// in host memory with the router on a GPU (less than all of them: a whole layer is placed instead).
void size_expert_cache(PlacementPlan& plan, const Weights& weights, const ModelConfig& c, uint64_t bytes) {
  const std::vector<uint64_t> per_layer = expert_bytes_per_layer(weights, c.num_layers);
  uint64_t per_held = 0;  // one held expert in every cached layer
  int64_t layers = 0, fewest = INT64_MAX;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = weights.layers[static_cast<size_t>(l)];
    const auto count = static_cast<int64_t>(L.experts.count());
    if (!L.is_moe || count < 2 || !L.experts.gate[0].scale_inv.empty() ||
        plan.placement.device_for(WeightGroup::experts, l).kind != DeviceKind::cpu ||
        plan.placement.device_for(WeightGroup::router, l).kind != DeviceKind::cuda)
      continue;
    per_held += per_layer[static_cast<size_t>(l)] / static_cast<uint64_t>(count);
    fewest = std::min(fewest, count);
    ++layers;
  }
  if (layers == 0 || per_held == 0) return;
  const int64_t held = std::min<int64_t>(static_cast<int64_t>(bytes / per_held), fewest - 1);
  // Below 1/32 of a layer's experts the cache's three launches per layer (split, held pairs, add)
  // cost about what its bytes save the CPU: none then.
  if (held <= 0 || held * 32 < fewest) return;
  plan.expert_cache_per_layer = held;
  plan.expert_cache_layers = layers;
  plan.expert_cache_bytes = static_cast<uint64_t>(held) * per_held;
}

PlacementPlan plan_with_defaults(const ModelFiles& files, const Weights& weights, const PlanRequest& request,
                                 const bool gpu_defaults) {
  const ModelConfig& c = files.config;
  const PlacementFlags& flags = request.flags;
  std::vector<PlacementRule> rules = Placement::parse_rule_list(request.rules);
  for (PlacementRule& r : placement_shorthand_rules(flags, files, weights, request.gpu_available)) rules.push_back(std::move(r));

  if (flags.explicit_expert_cache()) {
    (void)parse_vram_budget(flags.expert_cache, uint64_t{1} << 50, "--expert-cache");  // its text alone
    if (!request.gpu_available)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--expert-cache {}: no GPU is visible to this process, so no experts can be held in "
                              "VRAM; leave it out to run on the CPU",
                              flags.expert_cache));
  }
  PlacementPlan plan;
  plan.kv_pool_bytes = planned_kv_pool_bytes(c, request);
  plan.buffer_bytes = planned_buffer_bytes(c, request.max_batch_tokens);
  plan.vram_total_bytes = vram_total_bytes(flags);
  plan.placement = Placement::from_rules(rules, gpu_defaults);
  if (!flags.vram_budget.empty()) {
    plan.vram_budget_bytes = parse_vram_budget(flags.vram_budget, plan.vram_total_bytes);
    if (!request.gpu_available || plan.vram_total_bytes == 0)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--vram-budget {}: no GPU is visible to this process (and no --vram-total given), so "
                              "nothing can be placed in VRAM; leave --vram-budget out to run on the CPU",
                              flags.vram_budget));
  }
  // The KV pool and working buffers live with attention.
  const Device attention_device = plan.placement.device_for(WeightGroup::attention, 0);
  const bool on_gpu = attention_device.kind == DeviceKind::cuda;
  plan.cuda_working_bytes = planned_cuda_working_bytes(c, weights, plan.placement, request.max_batch_tokens,
                                                       request.stream_experts_min_tokens);
  const uint64_t fixed_gpu =
      on_gpu ? plan.kv_pool_bytes + plan.buffer_bytes + plan.cuda_working_bytes + kCudaContextReserveBytes : 0;
  uint64_t gpu_bytes = gpu_weight_bytes(weights, plan.placement) + fixed_gpu;
  uint64_t cache_bytes = 0, first_extra = 0;

  if (plan.vram_budget_bytes > 0) {
    if (gpu_bytes > plan.vram_budget_bytes) {
      std::string needed;
      for (const PlacedBytes& p : place_weights(weights, plan.placement))
        if (p.device.kind == DeviceKind::cuda)
          needed += fmt::format("\n  {:<16} {}", weight_group_display_name(p.group), gib(p.bytes));
      if (on_gpu)
        needed += fmt::format("\n  {:<16} {} ({} sessions x {} tokens at {})\n  {:<16} {} ({} tokens per pass)\n  "
                              "{:<16} {} (cuBLAS copies, expert rows; --ubatch shortens passes)\n  {:<16} {}",
                              "KV pool", gib(plan.kv_pool_bytes), request.max_sessions, request.context_tokens,
                              kv_type_name(request.kv_type), "working buffers", gib(plan.buffer_bytes),
                              request.max_batch_tokens, "CUDA working", gib(plan.cuda_working_bytes),
                              "CUDA reserve", gib(kCudaContextReserveBytes));
      throw Error(ErrorKind::out_of_memory,
                  fmt::format("--vram-budget {} ({}) is too small for what must be on the GPU: {} needed{}\nraise "
                              "the budget, shorten the context (-c) or sessions, or move groups to the CPU with "
                              "--placement (e.g. 'attention=cpu')",
                              flags.vram_budget, gib(plan.vram_budget_bytes), gib(gpu_bytes), needed));
    }
    // --expert-cache SIZE: the cache's share comes first, whole expert layers fill what is left.
    if (gpu_defaults && flags.explicit_expert_cache()) {
      cache_bytes = std::min(parse_vram_budget(flags.expert_cache, plan.vram_budget_bytes, "--expert-cache"),
                             plan.vram_budget_bytes - gpu_bytes);
      gpu_bytes += cache_bytes;
    }
    // Fill what is left with routed experts, whole layers in layer order (the expert cache then
    // holds the most routed experts of the other layers in what remains). Only layers whose experts
    // the defaults place are candidates.
    if (gpu_defaults) {
      const std::vector<uint64_t> per_layer = expert_bytes_per_layer(weights, c.num_layers);
      // The first resident layer brings the experts' scratch along when nothing streamed needed it.
      std::vector<PlacementRule> resident = rules;
      resident.push_back(parse_placement_rule("experts=cuda:0"));
      const uint64_t resident_working = planned_cuda_working_bytes(
          c, weights, Placement::from_rules(resident, gpu_defaults), request.max_batch_tokens,
          request.stream_experts_min_tokens);
      first_extra = resident_working > plan.cuda_working_bytes ? resident_working - plan.cuda_working_bytes : 0;
      std::vector<PlacementRule> fill;
      for (int64_t l = 0; l < c.num_layers; ++l) {
        const uint64_t b = per_layer[static_cast<size_t>(l)];
        if (b == 0 || !plan.placement.rule_for(WeightGroup::experts, l).from_defaults) continue;
        if (gpu_bytes + b + first_extra > plan.vram_budget_bytes) break;
        gpu_bytes += b + first_extra;
        first_extra = 0;
        fill.push_back(parse_placement_rule(fmt::format("experts[{}]=cuda:0", l)));
        ++plan.expert_layers_on_gpu;
      }
      // Merge consecutive layers into one rule.
      std::vector<PlacementRule> merged;
      for (PlacementRule& r : fill) {
        if (!merged.empty() && merged.back().last_layer + 1 == r.first_layer) {
          merged.back().last_layer = r.last_layer;
          merged.back().text = fmt::format("experts[{}-{}]=cuda:0", merged.back().first_layer, r.last_layer);
        } else {
          merged.push_back(std::move(r));
        }
      }
      for (PlacementRule& r : merged) rules.push_back(std::move(r));
      plan.placement = Placement::from_rules(rules, gpu_defaults);
      plan.cuda_working_bytes = planned_cuda_working_bytes(c, weights, plan.placement, request.max_batch_tokens,
                                                           request.stream_experts_min_tokens);
      if (flags.expert_cache.empty()) cache_bytes = plan.vram_budget_bytes - std::min(plan.vram_budget_bytes, gpu_bytes);
      // Held experts run on the GPU too: their rows' scratch (first_extra is 0 once a resident
      // layer brought it).
      cache_bytes -= std::min(cache_bytes, first_extra);
    }
  } else if (gpu_defaults && flags.explicit_expert_cache()) {
    cache_bytes = parse_vram_budget(flags.expert_cache, plan.vram_total_bytes, "--expert-cache");
  }
  if (gpu_defaults && cache_bytes > 0) {
    size_expert_cache(plan, weights, c, cache_bytes);
    if (plan.expert_cache_bytes > 0) plan.cuda_working_bytes += first_extra;
  }
  for (const PlacedBytes& p : place_weights(weights, plan.placement))
    plan.lines.push_back({weight_group_display_name(p.group), p.device, p.bytes});
  plan.lines.push_back({"KV pool", on_gpu ? attention_device : Device::cpu(), plan.kv_pool_bytes});
  plan.lines.push_back({"working buffers", on_gpu ? attention_device : Device::cpu(), plan.buffer_bytes});
  if (plan.expert_cache_bytes > 0) plan.lines.push_back({"expert cache", Device::cuda(0), plan.expert_cache_bytes});
  if (on_gpu) {
    plan.lines.push_back({"CUDA working memory", attention_device, plan.cuda_working_bytes});
    plan.lines.push_back({"CUDA reserve", attention_device, kCudaContextReserveBytes});
  }
  plan.vram_bytes = 0;
  for (const PlanLine& l : plan.lines)
    if (l.device.kind == DeviceKind::cuda) plan.vram_bytes += l.bytes;
  return plan;
}

}  // namespace

}  // namespace tandem
