#pragma once
// `tandem plan`'s model of speed: from a placement and the machine's rates, decode and prefill
// tokens per second, before any weight is loaded. The model (docs/PLACEMENT.md):
//   decode, one token: each layer reads, on each device, the bytes of its non-expert tensors and
//     top_k/num_experts of its routed experts; the embedding reads one row, the output head all of
//     it. On the CPU a layer takes bytes / DRAM bandwidth; on a GPU, bytes / gpu_decode_read_gbps
//     (the GEMV kernels' rate) plus kGpuLayerSeconds of kernel latency per transformer layer. A layer whose
//     roles span the CPU and a GPU takes both in turn (attention, then the routed experts it waits
//     for) plus kLayerSyncSeconds. With the output head on a GPU a token adds kGpuTokenSeconds.
//     With expert deferral (N of top_k), N/top_k of such a layer's CPU expert bytes run while the
//     next layer's GPU part does: that layer's GPU time becomes max(GPU, the deferred CPU time).
//     tok/s = 1 / Σ.
//   prefill, one pass of N tokens: per layer and device, max(FLOPs / compute rate, bytes /
//     bandwidth) with every expert read once; FLOPs = 2 × weight elements per token (routed experts
//     × top_k/num_experts) + causal attention 2·heads·(qk+v width)·N/2 per token; the slower device
//     bounds the layer. A pass of stream_experts_min_tokens or more streams each MoE layer whose
//     routed experts live in host memory and whose router runs on a GPU (the engine's rule:
//     streamable_expert_bytes): those experts' FLOPs and bytes count on the GPU, whose time is then
//     max(its compute, the layer's expert bytes / streamed_copy_gbps) — the next layer's copy runs
//     while this one computes. tok/s = N / Σ.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "tandem/engine/placement.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/tensor/tensor_view.hpp"

namespace tandem {

// Decode on a GPU, fitted to the GPU machine's H100 (2026-12-05, refitted 2026-12-06; Qwen3-30B-A3B
// Q4_K_M files of 8 and 48 layers all on cuda:0, int8 decode products, docs/PERF.md "Decode GEMVs on
// int8 activations" and "The routed experts' int8 down kernel by rows of a slot"):
// the decode GEMV kernels are bound by latency and instruction issue, not bytes, so they read at
// about the same rate on the H100 and the H200 though their HBM differs 1.4× (the output head, 255
// MB: 971 GB/s on the H100 of 3,073 with int8 products; 932 and 924 on the H100 and H200 with float
// ones): kGpuDecodeReadGbps, or kGpuDecodeReadShare of a slower GPU's measured bandwidth. A
// transformer layer's kernels take ~36 µs beyond their bytes, and a token ~300 µs more (the step's
// launch, the logits copied to the host and sampled): 1.14 ms per token at 8 layers and 4.01 ms at 48
// (measured 1.07–1.12 and 3.97–4.07) = n × (36 µs + 34.7 MB at 970 GB/s) + the head + 300 µs.
// Since (2026-12-07, docs/PERF.md "The fold and the Q6_K head measured"): the add + RMSNorm folded
// into the linears after it took ~2 µs off a layer (+2.4 % at 48 layers), and a Q6_K head whose rows
// the kernel stages in shared memory (gpu_head_staged) reads at 2,200 GB/s (115 µs for Qwen3's 255
// MB on the H100, 0.72 of its measured 3,073), or that share of a slower GPU's bandwidth: 48 ×
// (34 µs + 35.8 µs) + 116 µs + 300 µs = 3.77 ms a token against 3.51–3.62 measured.
inline constexpr double kGpuDecodeReadGbps = 970.0;
inline constexpr double kGpuDecodeReadShare = 0.75;
inline constexpr double kGpuStagedHeadReadGbps = 2200.0;
inline constexpr double kGpuStagedHeadReadShare = 0.72;
inline constexpr double kGpuLayerSeconds = 34e-6;
inline constexpr double kGpuTokenSeconds = 300e-6;
// The rate the decode GEMV kernels read a GPU's weights at, given its measured (or assumed) VRAM
// bandwidth (GB/s).
inline double gpu_decode_read_gbps(double vram_read_gbps) {
  return std::min(kGpuDecodeReadGbps, kGpuDecodeReadShare * vram_read_gbps);
}
// ... and the output head's rate where gpu_head_staged.
inline double gpu_staged_head_read_gbps(double vram_read_gbps) {
  return std::min(kGpuStagedHeadReadGbps, kGpuStagedHeadReadShare * vram_read_gbps);
}
// Whether the CUDA decode GEMV stages this output head's rows in shared memory: Q6_K and the shapes
// cuda_q6k_rows_staged allows (backend/cuda_q6k_staging.hpp).
bool gpu_head_staged(const TensorView& head);
// One GPU→CPU→GPU hand-off per layer whose routed experts run on the CPU: the rows and ids copied
// down, the CPU pool woken, the output copied up. Fitted on the H100 machine with the host mirrors
// pinned (docs/PERF.md, 2026-12-07 fourth session): the 48-layer hybrid (experts=cpu,*=cuda:0, 16
// threads) decoded at 71.5, 68.2 and 66.5 tok/s where this model with 145 µs (the pageable mirrors'
// fit) gave 57.2, 55.8 and 56.5 at each run's measured DRAM rate: 72, 77 and 90 µs. (DESIGN's 24-33 µs
// is the bare round trip.)
inline constexpr double kLayerSyncSeconds = 80e-6;
// Compute rates assumed where none is measured (GFLOP/s): per CPU core with AVX-512/AMX-class
// kernels, and one H100/H200-class GPU as this model counts FLOPs, fitted to the 48-layer Qwen3-30B-A3B
// Q4_K_M all on an H100, a 4,096-token prompt in one pass: 17,401 tok/s = 603 GFLOP a layer in 4.9 ms
// (docs/PERF.md, "A prefix hit's suffix pass and the 4k prompt, profiled"; the routed experts' grouped
// GEMMs and flash attention run far below the tensor cores' peak; the 400 TFLOP/s assumed before
// predicted 3.3× the measured speed).
inline constexpr double kAssumedCpuGflopsPerCore = 50.0;
inline constexpr double kAssumedGpuGflops = 123'000.0;
// Streamed prefill: each MoE layer's host experts copied in one DMA from a pinned mirror to one of
// two VRAM slots, the next layer's copy overlapping this one's compute (ForwardPass, ExpertStreamer).
// The copies of a pass priced at bytes / (pcie_gbps × kStreamedCopyShare): besides the copies the
// engine waits for each layer's routing on the host before it issues the next copy, and the first
// streamed layer of a pass is copied before anything overlaps it; those costs grow with the bytes
// (DeepSeek-V3's layers are 17× Qwen3's), so the one fitted constant is a share of the probed PCIe
// rate, not seconds a layer. Fitted to the H200 machine (pinned PCIe measured at 55 GB/s; docs/PERF.md
// "Prefill linears through cuBLAS", cuBLAS batched experts): the 48-layer Qwen3-30B-A3B Q4_K_M,
// experts=cpu,*=cuda:0, one 4,096-token pass, 11,649 ± 326 tok/s measured = 351.6 ms for 17.55 GB
// of experts, 0.91 of 55 GB/s (each layer's GPU work, ~4.9 ms, is under its 6.2–7.1 ms copy at 55
// GB/s); predicted 11,675 (1.00, the fit). Checked against DeepSeek-V3 Q4_K_M, the MoE layer as
// docs/PERF.md reads it from 5- and 8-layer files, (t8 − t5)/3 (rough: the 5-layer file's two
// streamed layers stay in the slots between passes): 8k in one pass, 143 ms measured, 154 predicted
// (compute-bound: 18.9 TFLOP at 123 TFLOP/s against 126.8–146.2 ms of copies; speed 0.93 of the
// measured); 8k in 4,096-token passes, 148 ms a layer and pass measured, 139.6 predicted
// (copy-bound; 1.06); 61 layers at 8k in one pass, 928 tok/s extrapolated, ~870 predicted (0.94).
// Figures with the earlier grouped-tile experts (hybrid 4k 5.9–6.3k tok/s, DeepSeek-V3's 174 ms a
// 4k layer) predate the fitted GPU compute rate and are not fitted.
inline constexpr double kStreamedCopyShare = 0.91;
inline double streamed_copy_gbps(double pcie_gbps) { return kStreamedCopyShare * pcie_gbps; }
// Bandwidths assumed for a GPU the process cannot measure (GB/s): H200 HBM3e at ~80 % of 4.8 TB/s,
// pinned PCIe 5.0 x16 as measured on the GPU machine.
inline constexpr double kAssumedVramGbps = 3800.0;
inline constexpr double kAssumedPcieGbps = 55.0;

// The engine's automatic streaming threshold (LoadOptions::kStreamExpertsAutoTokens).
inline constexpr int64_t kStreamExpertsMinTokens = 256;

struct MachineRates {
  double dram_read_gbps = 0;  // 1e9 bytes/s
  bool dram_measured = false;
  bool gpu_present = false;
  double vram_read_gbps = kAssumedVramGbps;
  double pcie_gbps = kAssumedPcieGbps;
  bool gpu_measured = false;
  double cpu_gflops = 0;
  double gpu_gflops = kAssumedGpuGflops;
  int threads = 1;
  // Prefill passes of this many tokens or more stream host experts to the router's GPU (the engine's
  // stream_experts_min_tokens as it resolves it here: automatic_stream_experts_min_tokens); 0: never.
  int64_t stream_experts_min_tokens = kStreamExpertsMinTokens;
};

struct PerformancePrediction {
  double decode_tok_s = 0;
  double prefill_4k_tok_s = 0;
  double prefill_8k_tok_s = 0;
  uint64_t decode_bytes_cpu = 0;  // bytes one decode token reads on the CPU
  uint64_t decode_bytes_gpu = 0;  // ... and on GPUs
  uint64_t staged_head_bytes = 0; // of those, an output head read at gpu_staged_head_read_gbps
  int64_t split_layers = 0;       // layers whose roles span the CPU and a GPU (each pays the sync)
  double decode_flops_per_token = 0;
  int64_t prefill_streamed_layers = 0;  // MoE layers whose host experts the 4k pass streams to a GPU
  uint64_t prefill_streamed_bytes = 0;  // ... and the bytes it copies over PCIe
};

// The cost of one decode token and of prefill, by the model above.
// `expert_cache_per_layer`: experts the GPU expert cache holds in each host-expert layer
// (PlacementPlan::expert_cache_per_layer), whose share of the decode bytes it reads from VRAM.
PerformancePrediction predict_performance(const ModelConfig& config, const Weights& weights,
                                          const Placement& placement, const MachineRates& rates,
                                          int64_t expert_cache_per_layer = 0, int64_t defer_experts = 0);
// Prefill of one `tokens`-token pass.
double predict_prefill_tok_s(const ModelConfig& config, const Weights& weights, const Placement& placement,
                             const MachineRates& rates, int64_t tokens);
// A `prompt_tokens` prompt in passes of `pass_tokens` after `context_before` cached tokens, as the
// engine runs it: each pass as above, attending also to the tokens before it (a streamed pass copies
// its layers' experts again). Error(invalid_argument) for a non-positive prompt or pass size.
double predict_prompt_prefill_tok_s(const ModelConfig& config, const Weights& weights, const Placement& placement,
                                    const MachineRates& rates, int64_t prompt_tokens, int64_t pass_tokens,
                                    int64_t context_before = 0);

// The routed-expert bytes of the layers a long enough prefill streams under this placement (MoE
// layers with experts in host memory and the router on a GPU, experts the CUDA kernels read).
uint64_t streamable_expert_bytes(const Weights& weights, const Placement& placement);
// LoadOptions::kStreamExpertsAutomatic resolved: kStreamExpertsMinTokens when there are streamable
// bytes and their pinned host mirrors take at most 40 % of `memory_bytes`, else 0 (never).
int64_t automatic_stream_experts_min_tokens(uint64_t streamable_bytes, double memory_bytes);
double physical_memory_bytes();  // this machine's memory; 0 when unknown

// Measured rates cached in $XDG_CACHE_HOME/tandem/machine-rates.json (or ~/.cache/tandem/...),
// keyed by machine: host name, CPU model and thread count (GPU rates: the GPU's index in place of
// the thread count). Fields: dram_read_gbps, vram_read_gbps, pcie_h2d_gbps, pcie_d2h_gbps.
// Nothing when the file is missing, unreadable or has no positive value for the key and field.
std::string machine_rates_key(int threads);
std::string gpu_rates_key(int device);
std::string machine_rates_cache_path();
std::optional<double> cached_machine_rate(const std::string& key, const std::string& field);
// Best effort: a cache that cannot be written is not an error.
void store_machine_rate(const std::string& key, const std::string& field, double value);

// GPU 0's HBM read and pinned PCIe rates into `rates` (gpu_present, vram_read_gbps, pcie_gbps,
// gpu_measured), from the cache or measured (then cached); `remeasure` ignores the cache. Returns
// where they came from ("cached (PATH)", "measured on cuda:0", "assumed (not measured)" or "no GPU
// visible"); pcie_h2d/d2h get the two directions (0 when not measured).
std::string load_gpu_rates(MachineRates& rates, bool remeasure, double& pcie_h2d_gbps, double& pcie_d2h_gbps);

}  // namespace tandem
