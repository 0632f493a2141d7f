#pragma once
// A whole model's prefill and decode speed as llama-bench measures them (pp = one prompt of p
// tokens from an empty cache, tg = n decode steps from an empty cache; repetitions, mean ± sd of
// tok/s), next to the decode roofline this machine's stream bandwidth implies for the file, and
// the routers' spread over the experts.
#include <cstdint>
#include <string>
#include <vector>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/engine/placement_plan.hpp"
#include "tandem/kv/kv_type.hpp"

namespace tandem {

struct ModelBenchOptions {
  std::string model_path;
  int64_t prompt_tokens = 512;   // pp
  int64_t gen_tokens = 128;      // tg
  int64_t depth = 0;             // tokens in the cache before each test (llama-bench's -d), not timed
  int threads = 0;               // 0: one per physical core
  int reps = 5;
  int64_t spread_tokens = 4096;  // tokens of the routing-spread prompt; 0 skips it
  uint64_t stream_bytes = uint64_t{1} << 30;
  uint64_t seed = 1;
  CpuKernels kernels = CpuKernels::fast;  // LoadOptions::cpu_kernels (reference: to compare)
  std::string placement;                  // LoadOptions::placement ("" = the defaults)
  bool gpu_by_default = false;            // LoadOptions::gpu_by_default (the CLI's: true)
  PlacementFlags placement_flags;         // LoadOptions::placement_flags (--vram-budget, --cpu-moe, -ot, …)
  int64_t defer_experts = 0;              // LoadOptions::defer_experts (0 = off)
  int64_t ubatch = 0;                     // LoadOptions::max_batch_tokens: tokens per pass (0 = the default)
  KvType kv_type = KvType::f16;           // LoadOptions::kv_type (--kv-type)
  static constexpr int kMaxReps = 100;
};

struct ModelBenchResult {
  int threads = 0;
  double prefill_tok_s = 0, prefill_tok_s_sd = 0;
  double decode_tok_s = 0, decode_tok_s_sd = 0;
  double stream_read_gbps = 0;
  int64_t ubatch = 0;            // tokens per forward pass the engine ran with
  int64_t stream_experts_min_tokens = 0;  // the engine's: passes this long stream host experts to a GPU
  int64_t prefill_passes = 0;    // forward passes of one pp prompt (its chunks), counted by the scheduler
  int64_t depth_passes = 0;      // forward passes that cached the -d tokens before a test (not timed)
  std::string placement;  // the rules the engine resolved (placement_flags applied), Placement::to_string
  // Weight bytes one decode token reads: every non-expert weight, top_k experts of each MoE layer
  // (the layer's mean expert size), one embedding row and the whole output projection.
  double decode_bytes_per_token = 0;
  double decode_roofline_tok_s = 0;  // stream_read_gbps / decode_bytes_per_token
  double experts_hit_fraction = 0;   // per MoE layer over the spread prompt, averaged (0 when skipped)
  double experts_hit_uniform = 0;    // what uniform random routing would give for those tokens
  std::vector<double> experts_hit_per_layer;  // per MoE layer, in layer order
  int64_t model_bytes = 0, parameters = 0;
  // The GPU expert cache (--expert-cache; refreshed after the warm-up): experts held per layer, its
  // layers, and the share of those layers' routed pairs the held experts took during the tests.
  int64_t expert_cache_per_layer = 0, expert_cache_layers = 0;
  double expert_cache_held_fraction = 0;
  std::vector<std::string> warnings;  // what loading worked around (Engine::warnings)
};

// Error(out_of_range) for prompt or generated tokens outside 1..the model's context (at most
// 65536) or reps outside 1..kMaxReps; errors from loading the model pass through.
ModelBenchResult run_model_bench(const ModelBenchOptions& options);

}  // namespace tandem
