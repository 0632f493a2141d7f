// The placement planner: rules from the user and the shorthands, then a VRAM budget filled with
// routed experts layer by layer, and the table of what went where.
#include "tandem/engine/placement_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "tandem/backend/cuda_backend.hpp"
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

PlacementPlan plan_placement(const ModelFiles& files, const Weights& weights, const PlanRequest& request) {
  const ModelConfig& c = files.config;
  const PlacementFlags& flags = request.flags;
  std::vector<PlacementRule> rules = Placement::parse_rule_list(request.rules);
  for (PlacementRule& r : placement_shorthand_rules(flags, files, weights, request.gpu_available)) rules.push_back(std::move(r));
  const bool gpu_defaults = request.gpu_available && flags.wants_gpu_defaults();

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
  const uint64_t fixed_gpu = on_gpu ? plan.kv_pool_bytes + plan.buffer_bytes + kCudaContextReserveBytes : 0;
  uint64_t gpu_bytes = gpu_weight_bytes(weights, plan.placement) + fixed_gpu;

  if (plan.vram_budget_bytes > 0) {
    if (gpu_bytes > plan.vram_budget_bytes) {
      std::string needed;
      for (const PlacedBytes& p : place_weights(weights, plan.placement))
        if (p.device.kind == DeviceKind::cuda)
          needed += fmt::format("\n  {:<16} {}", weight_group_display_name(p.group), gib(p.bytes));
      if (on_gpu)
        needed += fmt::format("\n  {:<16} {} ({} sessions x {} tokens at {})\n  {:<16} {} ({} tokens per pass)\n  "
                              "{:<16} {}",
                              "KV pool", gib(plan.kv_pool_bytes), request.max_sessions, request.context_tokens,
                              kv_type_name(request.kv_type), "working buffers", gib(plan.buffer_bytes),
                              request.max_batch_tokens, "CUDA reserve", gib(kCudaContextReserveBytes));
      throw Error(ErrorKind::out_of_memory,
                  fmt::format("--vram-budget {} ({}) is too small for what must be on the GPU: {} needed{}\nraise "
                              "the budget, shorten the context (-c) or sessions, or move groups to the CPU with "
                              "--placement (e.g. 'attention=cpu')",
                              flags.vram_budget, gib(plan.vram_budget_bytes), gib(gpu_bytes), needed));
    }
    // Fill what is left with routed experts, whole layers in layer order (hot experts per layer
    // need the expert cache). Only layers whose experts the defaults place are candidates.
    if (gpu_defaults) {
      const std::vector<uint64_t> per_layer = expert_bytes_per_layer(weights, c.num_layers);
      std::vector<PlacementRule> fill;
      for (int64_t l = 0; l < c.num_layers; ++l) {
        const uint64_t b = per_layer[static_cast<size_t>(l)];
        if (b == 0 || !plan.placement.rule_for(WeightGroup::experts, l).from_defaults) continue;
        if (gpu_bytes + b > plan.vram_budget_bytes) break;
        gpu_bytes += b;
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
    }
  }
  for (const PlacedBytes& p : place_weights(weights, plan.placement))
    plan.lines.push_back({weight_group_display_name(p.group), p.device, p.bytes});
  plan.lines.push_back({"KV pool", on_gpu ? attention_device : Device::cpu(), plan.kv_pool_bytes});
  plan.lines.push_back({"working buffers", on_gpu ? attention_device : Device::cpu(), plan.buffer_bytes});
  if (on_gpu) plan.lines.push_back({"CUDA reserve", attention_device, kCudaContextReserveBytes});
  plan.vram_bytes = 0;
  for (const PlanLine& l : plan.lines)
    if (l.device.kind == DeviceKind::cuda) plan.vram_bytes += l.bytes;
  return plan;
}

}  // namespace tandem
