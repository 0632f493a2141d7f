#pragma once
// From what the user asked for to one Placement: llama.cpp's placement spellings (-ngl,
// --cpu-moe, --n-cpu-moe, -ot) translated into placement rules, and `--vram-budget`, which fits
// the non-expert part, the KV pool and working buffers into a GPU budget and fills what is left
// with routed experts, layer by layer. Works from the bound weights (views into the file mapping)
// and the config alone: no GPU and no weight load are needed to plan. Order of the rules and the
// budget arithmetic: docs/PLACEMENT.md.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/engine/placement.hpp"
#include "tandem/kv/kv_type.hpp"
#include "tandem/model/model_config.hpp"

namespace tandem {

struct ModelFiles;

struct PlacementFlags {
  std::string n_gpu_layers;                  // -ngl: "" (not given), N >= 0, -1, "all" or "auto"
  bool cpu_moe = false;                      // --cpu-moe
  int64_t n_cpu_moe = -1;                    // --n-cpu-moe N; -1: not given
  std::vector<std::string> override_tensor;  // -ot REGEX=DEVICE[,REGEX=DEVICE...], each flag in order
  std::string vram_budget;                   // --vram-budget: "" (none), bytes, "24G", "500M", "80%"
  uint64_t vram_total_bytes = 0;             // --vram-total: the card's memory; 0: ask cuda:0
  // --expert-cache: VRAM for the GPU expert cache (each host-expert layer's most routed experts held
  // on the GPU): "" (automatic: with --vram-budget, what the whole expert layers leave of it), "off",
  // or a size ("8G", bytes, "50%" of the budget) taken before whole expert layers fill the rest.
  std::string expert_cache;

  // Whether anything here changes placement from the rules alone.
  bool any() const;
  bool explicit_expert_cache() const;  // --expert-cache SIZE (not "" or "off")
  // Whether the rules not written by the user default to the GPU ones (experts=cpu,*=cuda:0):
  // with --vram-budget, --cpu-moe or --n-cpu-moe. -ngl and -ot say where everything goes themselves.
  bool wants_gpu_defaults() const;
};

// The rules these flags stand for, in the documented order: -ot (flag order, comma lists in
// order), --cpu-moe, --n-cpu-moe, -ngl. Tensor names are the file's (GGUF names for a GGUF, the
// safetensors names for an HF folder); a role group of a layer moves as a whole when any of its
// tensors matches. Throws Error(invalid_argument) for a bad regex, an unknown device, a regex that
// matches no tensor, or a bad number. Without `gpu_available`, -ngl places nothing (llama.cpp runs
// on the CPU then too; the CLI says so).
std::vector<PlacementRule> placement_shorthand_rules(const PlacementFlags& flags, const ModelFiles& files,
                                                     const Weights& weights, bool gpu_available);

// "24G", "500M", "1.5GiB", "123456" (bytes), "80%" (of `card_total_bytes`). K/M/G/T are binary
// (1024-based). Throws Error(invalid_argument) for bad text, a percentage without a card, or a
// budget larger than the card (when `card_total_bytes` is known). `flag` names the option in errors
// (--expert-cache parses its size the same way, a percentage then being of the budget).
uint64_t parse_vram_budget(std::string_view text, uint64_t card_total_bytes,
                           std::string_view flag = "--vram-budget");

// The card's memory: `flags.vram_total_bytes` when given, else cuda:0's total when the CUDA
// backend is built and a GPU is visible, else 0.
uint64_t vram_total_bytes(const PlacementFlags& flags);

// What the planner counts on a GPU beyond the weights.
inline constexpr uint64_t kCudaContextReserveBytes = uint64_t{512} << 20;  // context, cuBLAS-like workspaces, slack

struct PlanRequest {
  std::string rules;        // --placement (parsed rules come first)
  PlacementFlags flags;
  bool gpu_available = false;  // the GPU defaults apply (and the budget can be met) only with a GPU
  // The hybrid defaults apply with a GPU even when no flag asks for them (the CLI's default on a GPU
  // machine; LoadOptions::gpu_by_default). They fall back to all on the CPU, saying why in
  // PlacementPlan::gpu_defaults_declined, when this load needs the CPU's attention
  // (`cpu_attention_reason`), the KV type or a weight type they would put on the GPU has no CUDA
  // kernel, or what they put on the GPU does not fit its free memory.
  bool gpu_by_default = false;
  std::string cpu_attention_reason;  // e.g. "--kv-policy sinks:4,64 compacts KV rows in host memory"
  // Prefill passes of this many tokens or more stream host experts to the GPU (the CUDA working
  // memory then holds two layers' experts); 0: never.
  int64_t stream_experts_min_tokens = 256;
  int64_t max_sessions = 1;
  int64_t context_tokens = 4096;  // per session
  KvType kv_type = KvType::f16;
  int64_t max_batch_tokens = 512;
};

struct PlanLine {
  std::string what;  // a weight group's display name, "KV pool", "working buffers", "CUDA working memory",
                     // "CUDA reserve"
  Device device;
  uint64_t bytes = 0;
};

struct PlacementPlan {
  Placement placement;
  std::vector<PlanLine> lines;      // weights per (group, device), then KV pool and buffers
  uint64_t vram_bytes = 0;          // everything the plan puts on GPUs
  uint64_t vram_budget_bytes = 0;   // 0: no budget given
  uint64_t vram_total_bytes = 0;    // 0: no card known
  uint64_t kv_pool_bytes = 0;
  uint64_t buffer_bytes = 0;        // working buffers on the attention device
  uint64_t cuda_working_bytes = 0;  // what the CUDA backend's own scratch grows to (planned_cuda_working_bytes)
  std::string gpu_defaults_declined;  // why the automatic hybrid defaults stayed on the CPU ("" = they did not)
  int64_t expert_layers_on_gpu = 0;  // layers whose routed experts the budget fill put on the GPU
  // The GPU expert cache (PlacementFlags::expert_cache): experts held per layer in each MoE layer
  // whose experts stay in host memory with its router on the GPU, and the VRAM that takes (also a
  // line "expert cache"); 0 when off or too small for one expert per layer.
  int64_t expert_cache_per_layer = 0;
  int64_t expert_cache_layers = 0;
  uint64_t expert_cache_bytes = 0;
};

// The KV pool of `request` (max_sessions × context at the KV type, whole blocks of 16 tokens).
uint64_t planned_kv_pool_bytes(const ModelConfig& config, const PlanRequest& request);
// Activations of one forward pass of max_batch_tokens rows, f32: the residual stream and its
// normed copy, q/k/v/attention output, the widest FFN's gate/up/act, and the logits.
uint64_t planned_buffer_bytes(const ModelConfig& config, int64_t max_batch_tokens);

// The CUDA backend's scratch on the attention device at passes of `max_batch_tokens` tokens, as its
// slots grow to the largest call (cuda/src/cuda_backend.cpp): the bf16 copies of the widest dense
// weight on the GPU and of its input for cuBLAS (passes of 256+ tokens), and, when routed experts
// run there (resident, or streamed from host memory for prefill), their gathered rows, activations
// and outputs per (token, expert) pair, the cuBLAS path's chunk of dequantised experts, and for
// streaming the two slots of one layer's experts each. 0 when attention is not on a GPU.
uint64_t planned_cuda_working_bytes(const ModelConfig& config, const Weights& weights, const Placement& placement,
                                    int64_t max_batch_tokens, int64_t stream_experts_min_tokens);

// Rules (--placement, then shorthands, then the budget fill, then the defaults) resolved for
// these weights. With a budget: Error(out_of_memory) listing what the non-expert part needs when it
// does not fit; Error(invalid_argument) for a budget larger than the card or without a GPU.
PlacementPlan plan_placement(const ModelFiles& files, const Weights& weights, const PlanRequest& request);

}  // namespace tandem
