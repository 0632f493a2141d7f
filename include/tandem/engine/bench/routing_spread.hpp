#pragma once
// How widely a model's routers spread tokens over the experts: the fraction of each MoE layer's
// experts that a batch of tokens hits. A trained model (or a well-built synthetic one) hits nearly
// all of them over a few thousand tokens; a collapsed router hits a handful, and then benchmarks
// read far fewer expert bytes than real use does.
#include <cstdint>
#include <vector>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem {

struct RoutingSpread {
  int64_t tokens = 0;
  std::vector<int64_t> experts_hit;  // per MoE layer, in layer order
  int64_t experts = 0;
  double mean_fraction() const;      // experts_hit / experts averaged over the MoE layers (0 when none)
  // What uniform random routing of the same tokens would give: 1 − (1 − top_k/experts)^tokens.
  static double uniform_fraction(int64_t tokens, int64_t top_k, int64_t experts);
};

// Runs `tokens` random token ids (seeded) as one prompt through the model on a CPU backend of
// `threads` threads (0 = one per core) and records every MoE layer's expert ids. Error(out_of_range)
// for tokens outside 1..the model's context (at most 65536).
RoutingSpread measure_routing_spread(const ModelFiles& files, int64_t tokens, int threads, uint64_t seed = 1,
                                     CpuKernels kernels = CpuKernels::fast);

}  // namespace tandem
