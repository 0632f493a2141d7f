#pragma once
// Feed-forward operators: the SiLU-GLU MLP (dense layers, shared experts) and routed experts
// computed per expert over the tokens routed to it. The MoE call takes the whole batch's hidden
// states, expert ids and weights: the seam where fast CPU kernels and the CPU/GPU split plug in.
#include <cstdint>
#include <vector>

#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

// Buffers grown to the largest batch seen, then reused: no allocation per step. One per caller
// (the CPU backend owns its own); one call at a time.
class FeedForwardWorkspace {
 private:
  friend void silu_glu_mlp(ThreadPool*, const LinearWeight&, const LinearWeight&, const LinearWeight&,
                           const float*, int64_t, FeedForwardWorkspace&, float*);
  friend void moe_routed_experts(ThreadPool*, const ExpertWeights&, const float*, int64_t, int64_t,
                                 const int32_t*, const float*, int64_t, FeedForwardWorkspace&, float*);
  std::vector<float> gate_, up_, gathered_, expert_out_;
  std::vector<int32_t> tokens_by_expert_;  // token·top_k + slot, grouped by expert
  std::vector<int64_t> expert_begin_;      // [experts + 1] offsets into tokens_by_expert_
  std::vector<int64_t> expert_fill_;       // [experts] next free slot of each expert while grouping
};

// out[t] = down(silu(gate(x[t])) · up(x[t])); x: [tokens, hidden], out: [tokens, hidden].
void silu_glu_mlp(ThreadPool* pool, const LinearWeight& gate, const LinearWeight& up,
                  const LinearWeight& down, const float* x, int64_t tokens, FeedForwardWorkspace& ws,
                  float* out);

// out[t] = Σ_i weights[t, i] · expert_{ids[t, i]}(x[t]), computed expert by expert over the tokens
// routed to it; a pair with a negative id adds nothing (a token whose pairs all are: zeros).
void moe_routed_experts(ThreadPool* pool, const ExpertWeights& experts, const float* x, int64_t tokens,
                        int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                        FeedForwardWorkspace& ws, float* out);

}  // namespace tandem
