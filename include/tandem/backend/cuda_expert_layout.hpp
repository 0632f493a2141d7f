#pragma once
// Which routed experts the CUDA kernels read through one table of VRAM pointers (the streamer's slots
// and the expert cache lay them out so: cuda/src/expert_shape.cpp): gate and up of one stored type,
// down of one, the same shapes in every expert, no biases, block scales on all or none, whole rows
// and bytes present. `tandem plan` asks it too, for the layers a prefill streams. In every build.
#include <cstddef>

#include "tandem/model/weights.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem {

inline bool cuda_experts_alike(const ExpertWeights& ew) {
  const size_t count = ew.count();
  if (count == 0 || ew.up.size() != count || ew.down.size() != count) return false;
  const LinearWeight &g0 = ew.gate[0], &u0 = ew.up[0], &d0 = ew.down[0];
  if (g0.weight.dtype != u0.weight.dtype) return false;
  for (const LinearWeight* w : {&g0, &u0, &d0})
    if (row_bytes(w->weight.dtype, w->in_features()).value_or(0) == 0) return false;
  const bool scaled = !g0.scale_inv.empty();
  const int64_t intermediate = g0.out_features();
  for (size_t e = 0; e < count; ++e) {
    const LinearWeight &g = ew.gate[e], &u = ew.up[e], &d = ew.down[e];
    const bool alike = g.weight.dtype == g0.weight.dtype && u.weight.dtype == u0.weight.dtype &&
                       d.weight.dtype == d0.weight.dtype && g.out_features() == intermediate &&
                       u.out_features() == intermediate && d.in_features() == intermediate &&
                       u.in_features() == g.in_features() && d.out_features() == g.in_features() &&
                       g.bias.empty() && u.bias.empty() && d.bias.empty() && g.scale_inv.empty() != scaled &&
                       u.scale_inv.empty() != scaled && d.scale_inv.empty() != scaled &&
                       g.weight.data != nullptr && u.weight.data != nullptr && d.weight.data != nullptr;
    if (!alike) return false;
  }
  return true;
}

}  // namespace tandem
