#pragma once
// One MoE layer of a preset, built in memory (random weights in the stored types `tandem synth`
// writes), run through the CPU backend's moe_routed_experts with random top-k routing per token:
// how close the expert kernels come to this machine's stream read bandwidth (decode, small
// batches) and what matrix throughput they reach (prefill, large batches).
#include <cstdint>
#include <string>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/model/synth.hpp"

namespace tandem {

struct ExpertBenchOptions {
  std::string preset;
  SynthQuant quant = SynthQuant::q4_k_m;
  int64_t batch = 1;          // tokens per step, 1..kMaxBatch
  int threads = 0;            // 0: one per physical core
  double min_seconds = 2.0;   // time the steps for at least this long (after warm-up)
  uint64_t stream_bytes = uint64_t{1} << 30;  // the stream read probe's buffer
  uint64_t seed = 1;
  CpuKernels kernels = CpuKernels::fast;  // the CPU backend's kernels (reference: to compare)
  // The experts prepared as the engine prepares CPU weights (Q4_K and Q6_K repacked into strips;
  // LoadOptions::cpu_repack); TANDEM_CPU_REPACK=0/1 in the environment overrides it.
  bool repack = true;
  static constexpr int64_t kMaxBatch = 16384;
};

struct ExpertBenchResult {
  std::string preset;
  SynthQuant quant = SynthQuant::q4_k_m;
  int64_t batch = 0, top_k = 0, experts = 0, hidden = 0, moe_intermediate = 0;
  DType gate_type = DType::f32, up_type = DType::f32, down_type = DType::f32;
  int threads = 0;
  int64_t steps = 0;
  double seconds_per_step = 0;            // mean over the timed steps
  double expert_bytes_per_step = 0;       // mean bytes of the distinct experts hit per step
  uint64_t layer_bytes = 0;               // all experts of the layer
  // Copies of the layer the steps take in turn, so that they cycle through as many bytes as the
  // stream probe reads (1 GiB by default): the GPU machine's 300 MB L3 held most of one
  // Qwen3-30B-A3B layer (340 MB), which then "read" faster than memory.
  int64_t layer_copies = 1;
  double achieved_gbps = 0;               // expert bytes read / time
  double stream_read_gbps = 0;            // measured in the same run, same threads
  double ratio = 0;                       // achieved / stream
  double tflops = 0;                      // 2·3·hidden·moe_intermediate·batch·top_k per step / time
  int64_t repacked_bytes = 0;             // the CPU backend's repacked copies of the experts
};

// Error(invalid_argument) for an unknown preset, a batch outside 1..kMaxBatch or threads outside
// 0..1024; Error(out_of_memory) when the layer would not fit in memory.
ExpertBenchResult run_expert_bench(const ExpertBenchOptions& options);

}  // namespace tandem
