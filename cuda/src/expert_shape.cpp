#include "expert_shape.hpp"

#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {

std::optional<ExpertShape> alike_expert_shape(const ExpertWeights& ew) {
  const auto count = static_cast<int64_t>(ew.count());
  if (count == 0 || ew.up.size() != ew.gate.size() || ew.down.size() != ew.gate.size()) return std::nullopt;
  const LinearWeight &g0 = ew.gate[0], &u0 = ew.up[0], &d0 = ew.down[0];
  ExpertShape s;
  ExpertTable& t = s.table;
  t.experts = count;
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
  if (t.gate_type != t.up_type || t.gate_row_bytes == 0 || t.up_row_bytes == 0 || t.down_row_bytes == 0)
    return std::nullopt;
  s.scaled = !g0.scale_inv.empty();
  for (int64_t e = 0; e < count; ++e) {
    const auto i = static_cast<size_t>(e);
    const LinearWeight &g = ew.gate[i], &u = ew.up[i], &d = ew.down[i];
    const bool alike = g.weight.dtype == t.gate_type && u.weight.dtype == t.up_type && d.weight.dtype == t.down_type &&
                       g.out_features() == t.intermediate && u.out_features() == t.intermediate &&
                       d.in_features() == t.intermediate && u.in_features() == g.in_features() &&
                       d.out_features() == g.in_features() && g.bias.empty() && u.bias.empty() && d.bias.empty() &&
                       g.scale_inv.empty() != s.scaled && u.scale_inv.empty() != s.scaled &&
                       d.scale_inv.empty() != s.scaled && g.weight.data != nullptr && u.weight.data != nullptr &&
                       d.weight.data != nullptr;
    if (!alike) return std::nullopt;
  }
  return s;
}

}  // namespace tandem::cuda
