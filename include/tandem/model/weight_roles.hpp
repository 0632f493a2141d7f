#pragma once
// The one enumeration of (role group, layer) → bound weight. The memory report
// (summarize_weights), placement (each role group on a device) and the tests walk Weights through
// for_each_weight instead of listing the fields again, so a new weight field is added here once.
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tandem/model/weights.hpp"

namespace tandem {

// Role groups, the unit of placement:
//   embedding       token embedding
//   output          output projection (lm_head)
//   norms           attn_norm, ffn_norm per layer and the output norm
//   attention       q/k/v/o or MLA q_a/q_b/kv_a/kv_b, and their inner norms (q_norm, k_norm,
//                   q_a_norm, kv_a_norm)
//   router          router weight and DeepSeek-V3's score correction bias
//   experts         routed experts
//   shared_experts  shared expert(s) and Qwen2-MoE's shared-expert gate
//   dense_ffn       the FFN of dense layers
enum class WeightGroup : uint8_t { embedding, output, norms, attention, router, experts, shared_experts, dense_ffn };
inline constexpr size_t kWeightGroupCount = 8;
inline constexpr std::array<WeightGroup, kWeightGroupCount> kAllWeightGroups = {
    WeightGroup::embedding, WeightGroup::output,         WeightGroup::norms,    WeightGroup::attention,
    WeightGroup::router,    WeightGroup::experts,        WeightGroup::shared_experts, WeightGroup::dense_ffn};

// Layer index of roles that are not per layer (embedding, output, the output norm).
inline constexpr int64_t kNoLayer = -1;

// A lone tensor's role: a model parameter, or a buffer that HF does not count as one
// (DeepSeek-V3's router score correction bias).
enum class TensorRole : uint8_t { parameter, buffer };

// Calls, in a fixed order (embedding before output, so a tied output is met second):
//   fn(group, layer, view, TensorRole)  for each lone tensor (embedding, norms, router bias), and
//   fn(group, layer, linear)            for each LinearWeight (weight + bias + FP8 scales), every
//                                        routed expert's gate/up/down included.
// Empty (unbound) entries are visited too; callers skip what they do not need. W: Weights or
// const Weights (then the views and linears are const).
template <typename W, typename Fn>
void for_each_weight(W& w, Fn&& fn) {
  using View = std::conditional_t<std::is_const_v<W>, const TensorView, TensorView>;
  using Linear = std::conditional_t<std::is_const_v<W>, const LinearWeight, LinearWeight>;
  fn(WeightGroup::embedding, kNoLayer, static_cast<View&>(w.token_embedding), TensorRole::parameter);
  fn(WeightGroup::norms, kNoLayer, static_cast<View&>(w.output_norm), TensorRole::parameter);
  fn(WeightGroup::output, kNoLayer, static_cast<Linear&>(w.output));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    auto& l = w.layers[i];
    const auto layer = static_cast<int64_t>(i);
    fn(WeightGroup::norms, layer, static_cast<View&>(l.attn_norm), TensorRole::parameter);
    fn(WeightGroup::norms, layer, static_cast<View&>(l.ffn_norm), TensorRole::parameter);
    for (View* v : {&l.q_norm, &l.k_norm, &l.q_a_norm, &l.kv_a_norm})
      fn(WeightGroup::attention, layer, *v, TensorRole::parameter);
    for (Linear* lw : {&l.q, &l.k, &l.v, &l.o, &l.q_a, &l.q_b, &l.kv_a, &l.kv_b}) fn(WeightGroup::attention, layer, *lw);
    for (Linear* lw : {&l.ffn_gate, &l.ffn_up, &l.ffn_down}) fn(WeightGroup::dense_ffn, layer, *lw);
    fn(WeightGroup::router, layer, static_cast<Linear&>(l.router));
    fn(WeightGroup::router, layer, static_cast<View&>(l.router_bias), TensorRole::buffer);
    for (Linear* lw : {&l.shared_gate, &l.shared_up, &l.shared_down, &l.shared_expert_gate})
      fn(WeightGroup::shared_experts, layer, *lw);
    for (auto* experts : {&l.experts.gate, &l.experts.up, &l.experts.down})
      for (Linear& e : *experts) fn(WeightGroup::experts, layer, e);
  }
}

// Every TensorView of every role, a LinearWeight's weight, bias and FP8 scales included:
// fn(group, layer, view, TensorRole) (FP8 scales are buffers).
template <typename W, typename Fn>
void for_each_weight_tensor(W& w, Fn&& fn) {
  using View = std::conditional_t<std::is_const_v<W>, const TensorView, TensorView>;
  using Linear = std::conditional_t<std::is_const_v<W>, const LinearWeight, LinearWeight>;
  struct Visitor {
    Fn& fn;
    void operator()(WeightGroup g, int64_t layer, View& v, TensorRole role) const { fn(g, layer, v, role); }
    void operator()(WeightGroup g, int64_t layer, Linear& l) const {
      fn(g, layer, static_cast<View&>(l.weight), TensorRole::parameter);
      fn(g, layer, static_cast<View&>(l.bias), TensorRole::parameter);
      fn(g, layer, static_cast<View&>(l.scale_inv), TensorRole::buffer);
    }
  };
  for_each_weight(w, Visitor{fn});
}

}  // namespace tandem
