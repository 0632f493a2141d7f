#include "expert_shape.hpp"

#include "tandem/backend/cuda_expert_layout.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {

std::optional<ExpertShape> alike_expert_shape(const ExpertWeights& ew) {
  if (!cuda_experts_alike(ew)) return std::nullopt;
  const LinearWeight &g0 = ew.gate[0], &u0 = ew.up[0], &d0 = ew.down[0];
  ExpertShape s;
  ExpertTable& t = s.table;
  t.experts = static_cast<int64_t>(ew.count());
  t.intermediate = g0.out_features();
  t.gate_type = g0.weight.dtype;
  t.up_type = u0.weight.dtype;
  t.down_type = d0.weight.dtype;
  const auto rb = [](const LinearWeight& w) {
    return static_cast<int64_t>(row_bytes(w.weight.dtype, w.in_features()).value_or(0));
  };
  t.gate_row_bytes = rb(g0);
  t.up_row_bytes = rb(u0);
  t.down_row_bytes = rb(d0);
  s.scaled = !g0.scale_inv.empty();
  return s;
}

}  // namespace tandem::cuda
