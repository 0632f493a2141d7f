#include "tandem/model/weight_summary.hpp"

#include <set>
#include <utility>

namespace tandem {
namespace {

class SummaryBuilder {
 public:
  void add(const TensorView& v, bool routed_expert, bool is_parameter = true) {
    if (v.empty() || !seen_.insert({v.data, v.nbytes}).second) return;
    const int64_t elems = v.shape.elements();
    if (is_parameter) summary.parameters += elems;
    summary.bytes_by_type[std::string(dtype_name(v.dtype))] += v.nbytes;
    if (routed_expert) {
      summary.routed_expert_bytes += v.nbytes;
      if (is_parameter) summary.routed_expert_parameters += elems;
    } else {
      summary.other_bytes += v.nbytes;
    }
  }
  void add(const LinearWeight& w, bool routed_expert = false) {
    add(w.weight, routed_expert);
    add(w.bias, routed_expert);
    add(w.scale_inv, routed_expert, /*is_parameter=*/false);
  }

  WeightSummary summary;

 private:
  std::set<std::pair<const void*, uint64_t>> seen_;
};

}  // namespace

WeightSummary summarize_weights(const Weights& w) {
  SummaryBuilder b;
  b.add(w.token_embedding, false);
  b.add(w.output_norm, false);
  b.add(w.output);
  for (const LayerWeights& l : w.layers) {
    for (const TensorView* v : {&l.attn_norm, &l.ffn_norm, &l.q_norm, &l.k_norm, &l.q_a_norm, &l.kv_a_norm})
      b.add(*v, false);
    for (const LinearWeight* lw : {&l.q, &l.k, &l.v, &l.o, &l.q_a, &l.q_b, &l.kv_a, &l.kv_b, &l.ffn_gate, &l.ffn_up,
                                   &l.ffn_down, &l.router, &l.shared_gate, &l.shared_up, &l.shared_down,
                                   &l.shared_expert_gate})
      b.add(*lw);
    b.add(l.router_bias, false, /*is_parameter=*/false);
    for (const auto* experts : {&l.experts.gate, &l.experts.up, &l.experts.down})
      for (const LinearWeight& e : *experts) b.add(e, /*routed_expert=*/true);
  }
  return b.summary;
}

}  // namespace tandem
