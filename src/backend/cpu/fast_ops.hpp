#pragma once
// The CPU backend's fast operators: linear layers, the SiLU-GLU MLP and routed experts on the
// quantised kernels of backend/cpu/kernels. Activations are quantised once per call into
// workspace this object owns (grown to the largest batch, then reused: no allocation per step).
// The MoE operator (and the MLP, as one group) runs as one dispatch when it has few rows
// (decode): work items for the gate+up tiles of every expert hit (fused with SiLU), then one item
// per output row tile of the down projection over every expert, which also sums that tile of each
// token's routed rows with the routing weights; a per-expert counter, not a barrier, releases an
// expert's down rows once its gate/up tiles are done. Larger batches run two dispatches over
// (expert × token block × row tile) items and a routing-weighted sum. Results are the same bit for
// bit either way and at any thread count. Types without a kernel are not handled here
// (supports() is false): the backend calls the reference operators for them.
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/kernels/matmul_tile.hpp"
#include "backend/cpu/partitioned_items.hpp"
#include "backend/cpu/repacked_weights.hpp"
#include "backend/cpu/weight_fingerprint.hpp"
#include "tandem/backend/op_params.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

class ThreadPool;

class FastCpuOps {
 public:
  FastCpuOps(ThreadPool& pool, kernels::IsaLevel level);
  // With a given kernel table (tests: the emulated AMX kernels on a CPU without AMX).
  FastCpuOps(ThreadPool& pool, kernels::IsaLevel level, const kernels::KernelTable& table);

  kernels::IsaLevel level() const { return level_; }
  bool supports(const LinearWeight& w) const;

  // Repacks `w` into 16-row strips (RepackedWeights) when its type has a repacked kernel at this
  // level; later calls on `w` read the copy. Returns whether one is held.
  // `int8`: also the int8 copy, where the table has the kernel (the CPU backend asks for it as
  // cpu_int8_enabled and the memory guard say).
  bool prepare(const LinearWeight& w, bool int8 = false);
  int64_t repacked_bytes() const { return repacked_.bytes(); }
  // The bytes prepare(w) would copy (0: none).
  int64_t repack_bytes(const LinearWeight& w, bool int8) const {
    return supports(w) ? RepackedWeights::bytes_for(table_, w, int8) : 0;
  }

  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y);
  // Both return false (doing nothing) when a weight has no fast kernel.
  bool silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out);
  bool moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k, float* out);

  // MLA's per-head products with kv_b, as the reference (backend/cpu/reference/mla.cpp) defines them
  // (fast_mla.cpp). Expanding reads kv_b's value rows in their stored type. Absorbing multiplies by
  // each head's key rows transposed, which the stored rows cannot give a dot kernel: those are kept,
  // made on first use from kv_b, as f16 [heads · kv_lora][nope] (2 bytes per weight of kv_b's key
  // half: 2 MiB a layer for DeepSeek-V2-Lite, 16 MiB for V3). Both return false when kv_b is not
  // served here (the reference runs).
  bool mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q, int64_t tokens,
                        float* q_latent);
  bool mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended, int64_t tokens,
                         float* out);

  // Routed rows (tokens × top-k; tokens for the MLP) up to which the MoE and the MLP run as one
  // dispatch on a pool of several threads; above (or on one thread, where the single dispatch's
  // per-item atomics only cost), as two. Both give the same bits: tests set 0 to compare them.
  static constexpr int64_t kSingleDispatchRows = 256;
  void set_single_dispatch_rows(int64_t rows) { single_dispatch_rows_ = rows; }

 private:
  struct Group {  // one expert (or the dense MLP) over sorted rows [row0, row0 + rows)
    const LinearWeight* gate;
    const LinearWeight* up;
    const LinearWeight* down;
    int64_t row0, rows;
    const uint8_t* gate_strips = nullptr;  // the repacked copies, where held
    const uint8_t* up_strips = nullptr;
    const uint8_t* down_strips = nullptr;
    const uint8_t* gate_int8 = nullptr;  // the int8 copies, where held
    const uint8_t* up_int8 = nullptr;
    const uint8_t* down_int8 = nullptr;
  };
  Group group_of(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down, int64_t row0,
                 int64_t rows) const;
  struct Item {  // one unit of work: a group's token block × output row tile
    int32_t group;
    int64_t row0, rows, o0, o1;
  };

  // How sorted down rows become output rows: out[t] = Σ_s weights[t·top_k + s] · down[position[t·top_k
  // + s]] in slot order; weights == nullptr: out row r = down row r (the MLP, one group).
  struct Combine {
    int64_t tokens = 0, top_k = 1;
    const float* weights = nullptr;
    const int32_t* position = nullptr;
  };

  // x: the groups' input rows in sorted order, in the gate/up kernels' format; down_out: [rows, out].
  void run_groups(kernels::ActRows x, int64_t total_rows, float* down_out);
  // The same as run_groups then `combine`, in one dispatch (for at most kFusedMaxRows rows).
  void run_groups_fused(kernels::ActRows x, int64_t total_rows, const Combine& combine, float* out);
  bool supports_ffn(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down) const;
  void build_items(bool down_phase);
  void gate_up_item(const Item& it, kernels::ActRows x, float* hidden, int64_t inter, float* g, float* u,
                    int worker);
  // The calling worker's workspace for matmul_tile on `w` (nullptr when its kernels need none).
  void* tile_workspace(int worker, const LinearWeight& w);
  const float* bias_of(const LinearWeight& w, std::vector<float>& storage);
  kernels::ActRows quantize(kernels::ActFormat format, const float* x, int64_t rows, int64_t in,
                            std::vector<uint8_t>& storage);

  struct AbsorbedKeys {
    WeightFingerprint source;
    std::vector<uint16_t> f16;
    LinearWeight weight;  // views f16
  };
  const LinearWeight& absorbed_keys(const LinearWeight& kv_b, const MlaShape& shape);

  ThreadPool& pool_;
  kernels::IsaLevel level_;
  kernels::KernelTable table_;
  int64_t single_dispatch_rows_ = kSingleDispatchRows;
  std::mutex mutex_;  // the workspace below serves one call at a time
  std::vector<uint8_t> act_, act_tokens_, act_down_;
  std::vector<float> hidden_, down_out_, bias_;
  std::vector<int32_t> order_, position_;
  std::vector<int64_t> expert_begin_;
  std::vector<Group> groups_;
  std::vector<Item> items_;
  // run_groups_fused's state (its counters used through atomic_ref): per group, gate/up items left
  // and ready; per output row tile, groups left.
  std::vector<int32_t> items_left_, group_ready_, tile_groups_left_;
  PartitionedItems gate_up_queue_, down_queue_;
  RepackedWeights repacked_;
  std::mutex absorbed_mutex_;
  std::map<const void*, AbsorbedKeys> absorbed_;  // by kv_b's data
};

}  // namespace tandem
