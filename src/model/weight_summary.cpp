#include "tandem/model/weight_summary.hpp"

#include "tandem/model/weight_roles.hpp"

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
  WeightSummary summary;

 private:
  std::set<std::pair<const void*, uint64_t>> seen_;
};

}  // namespace

WeightSummary summarize_weights(const Weights& w) {
  SummaryBuilder b;
  for_each_weight_tensor(w, [&](WeightGroup g, int64_t, const TensorView& v, TensorRole role) {
    b.add(v, /*routed_expert=*/g == WeightGroup::experts, /*is_parameter=*/role == TensorRole::parameter);
  });
  return b.summary;
}

}  // namespace tandem
