#pragma once
// The CPU backend's fast operators: linear layers, the SiLU-GLU MLP and routed experts on the
// quantised kernels of backend/cpu/kernels. Activations are quantised once per call into
// workspace this object owns (grown to the largest batch, then reused: no allocation per step).
// The MoE operator runs two dispatches over (expert × token block × row tile) items for every
// expert hit — gate+up fused with SiLU, then down — and a routing-weighted sum; no barrier per
// expert. Types without a kernel are not handled here (supports() is false): the backend calls
// the reference operators for them.
#include <cstdint>
#include <mutex>
#include <vector>

#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/kernels/matmul_tile.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

class FastCpuOps {
 public:
  FastCpuOps(ThreadPool& pool, kernels::IsaLevel level);

  kernels::IsaLevel level() const { return level_; }
  bool supports(const LinearWeight& w) const;

  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y);
  // Both return false (doing nothing) when a weight has no fast kernel.
  bool silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out);
  bool moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k, float* out);

 private:
  struct Group {  // one expert (or the dense MLP) over sorted rows [row0, row0 + rows)
    const LinearWeight* gate;
    const LinearWeight* up;
    const LinearWeight* down;
    int64_t row0, rows;
  };
  struct Item {  // one unit of work: a group's token block × output row tile
    int32_t group;
    int64_t row0, rows, o0, o1;
  };

  // x: the groups' input rows in sorted order, in the gate/up kernels' format; down_out: [rows, out].
  void run_groups(kernels::ActRows x, int64_t total_rows, float* down_out);
  bool supports_ffn(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down) const;
  void build_items(bool down_phase);
  // The calling worker's workspace for matmul_tile on `w` (nullptr when its kernels need none).
  void* tile_workspace(int worker, const LinearWeight& w);
  const float* bias_of(const LinearWeight& w, std::vector<float>& storage);
  kernels::ActRows quantize(kernels::ActFormat format, const float* x, int64_t rows, int64_t in,
                            std::vector<uint8_t>& storage);

  ThreadPool& pool_;
  kernels::IsaLevel level_;
  kernels::KernelTable table_;
  std::mutex mutex_;  // the workspace below serves one call at a time
  std::vector<uint8_t> act_, act_tokens_, act_down_;
  std::vector<float> hidden_, down_out_, bias_;
  std::vector<int32_t> order_, position_;
  std::vector<int64_t> expert_begin_;
  std::vector<Group> groups_;
  std::vector<Item> items_;
};

}  // namespace tandem
