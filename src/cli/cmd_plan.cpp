// `tandem plan -m FILE [--vram-budget B] [--threads N] [--json]`: where each weight group goes and
// how fast decode and prefill should run there, from the file's metadata and tensor table (the
// weights are mapped, never read) and this machine's measured (or cached) bandwidth.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "core/environment.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/gpu_bandwidth.hpp"
#include "tandem/backend/stream_bandwidth.hpp"
#include "tandem/engine/placement_plan.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem::cli {
namespace {

struct PlanFlags {
  std::string model_path;
  std::string placement;
  PlacementFlags placement_flags;
  std::string vram_total;
  std::string kv_type;
  int threads = 0;
  int64_t context_tokens = 4096;
  int64_t parallel = 1;
  int64_t max_batch_tokens = 512;
  double dram_gbps = 0;  // 0: measure (or read the cache)
  uint64_t stream_mib = 1024;
  int64_t defer_experts = 0;
  bool remeasure = false;
  bool json = false;
};

std::string gib(uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  return bytes >= (uint64_t{1} << 30) ? fmt::format("{:.2f} GiB", b / (1 << 30)) : fmt::format("{:.1f} MiB", b / (1 << 20));
}

int plan_command(const PlanFlags& f) {
  const auto fail = [](const std::string& m) { throw Error(ErrorKind::invalid_argument, m); };
  if (f.threads < 0) fail(fmt::format("-t/--threads must be 0 (one per physical core) or more, not {}", f.threads));
  if (f.context_tokens < 1 || f.context_tokens > (int64_t{1} << 24))
    fail(fmt::format("-c/--ctx must be within [1, {}], not {}", int64_t{1} << 24, f.context_tokens));
  if (f.parallel < 1 || f.parallel > 1024) fail(fmt::format("--parallel must be within [1, 1024], not {}", f.parallel));
  if (f.max_batch_tokens < 1 || f.max_batch_tokens > (1 << 20))
    fail(fmt::format("--max-batch-tokens must be within [1, {}], not {}", 1 << 20, f.max_batch_tokens));
  if (f.dram_gbps < 0 || f.dram_gbps > 1e6) fail(fmt::format("--dram-gbps must be within (0, 1e6], not {}", f.dram_gbps));
  if (f.stream_mib < 1 || f.stream_mib > (uint64_t{1} << 20))
    fail(fmt::format("--stream-mib must be within [1, 1048576], not {}", f.stream_mib));

  const int64_t defer = defer_experts_from_flag(f.defer_experts);
  const ModelFiles files = open_model_files(f.model_path);
  const Weights weights = bind_weights(files);
  if (defer > 0 && defer >= files.config.num_experts_per_tok)
    fail(fmt::format("--defer-experts {}: must be below the model's {} routed expert(s) per token (0 = off)", defer,
                     std::max<int64_t>(0, files.config.num_experts_per_tok)));
  PlanRequest request;
  request.rules = f.placement;
  request.flags = f.placement_flags;
  request.flags.vram_total_bytes = vram_total_from_flag(f.vram_total);
  request.gpu_available = cuda_forward_available() || request.flags.vram_total_bytes > 0;
  request.gpu_by_default = true;
  request.max_sessions = f.parallel;
  request.context_tokens = f.context_tokens;
  request.kv_type = kv_type_from_flag(f.kv_type);
  request.max_batch_tokens = f.max_batch_tokens;
  const PlacementPlan plan = plan_placement(files, weights, request);

  MachineRates rates;
  auto cpu = make_cpu_backend(f.threads);
  rates.threads = cpu->threads();
  rates.cpu_gflops = kAssumedCpuGflopsPerCore * rates.threads;
  rates.gpu_present = cuda_forward_available();
  std::string dram_source = "given (--dram-gbps)";
  if (f.dram_gbps > 0) {
    rates.dram_read_gbps = f.dram_gbps;
  } else {
    const std::string key = machine_rates_key(rates.threads);
    const std::optional<double> cached = f.remeasure ? std::nullopt : cached_machine_rate(key, "dram_read_gbps");
    if (cached) {
      rates.dram_read_gbps = *cached;
      dram_source = "cached (" + machine_rates_cache_path() + ")";
    } else {
      StreamReadOptions so;
      so.buffer_bytes = f.stream_mib << 20;
      rates.dram_read_gbps = measure_stream_read_gbps(*cpu, so);
      store_machine_rate(key, "dram_read_gbps", rates.dram_read_gbps);
      dram_source = "measured";
    }
    rates.dram_measured = true;
  }
  double pcie_h2d_gbps = 0, pcie_d2h_gbps = 0;
  const std::string gpu_rates = load_gpu_rates(rates, f.remeasure, pcie_h2d_gbps, pcie_d2h_gbps);
  // As the engine resolves it on this machine (engine.cpp): automatic, or the environment's override.
  rates.stream_experts_min_tokens =
      automatic_stream_experts_min_tokens(streamable_expert_bytes(weights, plan.placement), physical_memory_bytes());
  if (const auto env = integer_from_environment("TANDEM_STREAM_EXPERTS_MIN_TOKENS", 0, INT64_MAX))
    rates.stream_experts_min_tokens = *env;
  const PerformancePrediction p =
      predict_performance(files.config, weights, plan.placement, rates, plan.expert_cache_per_layer, defer);

  nlohmann::ordered_json groups = nlohmann::ordered_json::array();
  for (const PlanLine& l : plan.lines)
    groups.push_back({{"group", l.what}, {"device", l.device.to_string()}, {"bytes", l.bytes}});
  if (f.json) {
    nlohmann::ordered_json j;
    j["model"] = f.model_path;
    j["decode_tok_s"] = p.decode_tok_s;
    j["prefill_4k_tok_s"] = p.prefill_4k_tok_s;
    j["prefill_8k_tok_s"] = p.prefill_8k_tok_s;
    j["vram_bytes"] = plan.vram_bytes;
    j["placement"] = {{"rules", plan.placement.to_string()}, {"groups", groups}};
    j["vram_budget_bytes"] = plan.vram_budget_bytes;
    j["vram_total_bytes"] = plan.vram_total_bytes;
    j["expert_layers_on_gpu"] = plan.expert_layers_on_gpu;
    j["expert_cache_bytes"] = plan.expert_cache_bytes;
    j["expert_cache_per_layer"] = plan.expert_cache_per_layer;
    j["expert_cache_layers"] = plan.expert_cache_layers;
    j["kv_pool_bytes"] = plan.kv_pool_bytes;
    j["buffer_bytes"] = plan.buffer_bytes;
    j["cuda_working_bytes"] = plan.cuda_working_bytes;
    j["gpu_defaults_declined"] = plan.gpu_defaults_declined;
    j["decode_bytes_per_token_cpu"] = p.decode_bytes_cpu;
    j["decode_bytes_per_token_gpu"] = p.decode_bytes_gpu;
    j["decode_flops_per_token"] = p.decode_flops_per_token;
    j["split_layers"] = p.split_layers;
    j["defer_experts"] = defer;
    j["layer_sync_seconds"] = kLayerSyncSeconds;
    j["gpu_layer_seconds"] = kGpuLayerSeconds;
    j["gpu_token_seconds"] = kGpuTokenSeconds;
    j["gpu_decode_read_gbps"] = gpu_decode_read_gbps(rates.vram_read_gbps);
    j["gpu_decode_read_fraction"] = gpu_decode_read_gbps(rates.vram_read_gbps) / rates.vram_read_gbps;
    j["gpu_staged_head_read_gbps"] = gpu_staged_head_read_gbps(rates.vram_read_gbps);
    j["decode_bytes_staged_head"] = p.staged_head_bytes;
    j["threads"] = rates.threads;
    j["dram_read_gbps"] = rates.dram_read_gbps;
    j["dram_source"] = dram_source;
    j["gpu_present"] = rates.gpu_present;
    j["vram_read_gbps"] = rates.vram_read_gbps;
    j["pcie_gbps"] = rates.pcie_gbps;
    j["pcie_h2d_gbps"] = pcie_h2d_gbps;
    j["pcie_d2h_gbps"] = pcie_d2h_gbps;
    j["gpu_rates"] = gpu_rates;
    j["cpu_gflops"] = rates.cpu_gflops;
    j["gpu_gflops"] = rates.gpu_gflops;
    j["stream_experts_min_tokens"] = rates.stream_experts_min_tokens;
    j["prefill_streamed_layers"] = p.prefill_streamed_layers;
    j["prefill_streamed_bytes"] = p.prefill_streamed_bytes;
    j["prefill_stream_gbps"] = streamed_copy_gbps(rates.pcie_gbps);
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("placement rules  {}\n", plan.placement.to_string());
  if (!plan.gpu_defaults_declined.empty())
    fmt::print("                 (all on the cpu, not the hybrid defaults: {})\n", plan.gpu_defaults_declined);
  fmt::print("{:<20}{:<10}{:>14}\n", "group", "device", "bytes");
  for (const PlanLine& l : plan.lines) fmt::print("{:<20}{:<10}{:>14}  {}\n", l.what, l.device.to_string(), l.bytes, gib(l.bytes));
  fmt::print("VRAM             {}", gib(plan.vram_bytes));
  if (plan.vram_budget_bytes > 0)
    fmt::print(" of a {} budget ({} routed-expert layers on the GPU)", gib(plan.vram_budget_bytes), plan.expert_layers_on_gpu);
  if (plan.vram_total_bytes > 0) fmt::print("; card {}", gib(plan.vram_total_bytes));
  fmt::print("\n");
  if (plan.expert_cache_per_layer > 0)
    fmt::print("expert cache     {} experts held in each of {} layers ({}), the most routed ones\n",
               plan.expert_cache_per_layer, plan.expert_cache_layers, gib(plan.expert_cache_bytes));
  fmt::print("DRAM read        {:.2f} GB/s, {} threads ({})\n", rates.dram_read_gbps, rates.threads, dram_source);
  fmt::print("VRAM, PCIe       {:.0f} GB/s, {:.0f} GB/s ({})\n", rates.vram_read_gbps, rates.pcie_gbps, gpu_rates);
  fmt::print("decode           {:.2f} tok/s ({:.1f} MB/token on the CPU, {:.1f} MB/token on GPUs, {} split layers at "
             "{:.0f} us each)\n",
             p.decode_tok_s, static_cast<double>(p.decode_bytes_cpu) / 1e6, static_cast<double>(p.decode_bytes_gpu) / 1e6,
             p.split_layers, kLayerSyncSeconds * 1e6);
  if (defer > 0)
    fmt::print("                 {} of {} routed experts a token deferred a layer (on the CPU while the GPU runs the "
               "next layer)\n",
               defer, files.config.num_experts_per_tok);
  fmt::print("prefill 4k, 8k   {:.1f} tok/s, {:.1f} tok/s (CPU {:.0f} GFLOP/s, GPU {:.0f} GFLOP/s assumed)\n",
             p.prefill_4k_tok_s, p.prefill_8k_tok_s, rates.cpu_gflops, rates.gpu_gflops);
  if (p.prefill_streamed_layers > 0)
    fmt::print("                 routed experts of {} layers streamed to the GPU per pass ({} over PCIe at {:.0f} GB/s)\n",
               p.prefill_streamed_layers, gib(p.prefill_streamed_bytes), streamed_copy_gbps(rates.pcie_gbps));
  return 0;
}

const RegisterCommand registered{
    {"plan", "place a model's weights (VRAM budget, llama.cpp spellings) and predict its speed, without loading it",
     [](CLI::App& sub) -> CommandRun {
       auto f = std::make_shared<PlanFlags>();
       sub.add_option("-m,--model", f->model_path, "GGUF file or HF model folder")->required();
       add_placement_flag(sub, f->placement);
       add_placement_shorthand_flags(sub, f->placement_flags, f->vram_total, /*with_ngl=*/true);
       add_kv_type_flag(sub, f->kv_type);
       sub.add_option("-t,--threads", f->threads, "CPU threads, 0 = one per physical core")->capture_default_str();
       sub.add_option("-c,--ctx,--ctx-size", f->context_tokens, "context per session for the KV pool")
           ->capture_default_str();
       sub.add_option("--parallel", f->parallel, "sessions the KV pool holds")->capture_default_str();
       sub.add_option("--max-batch-tokens,-b,--batch-size", f->max_batch_tokens, "tokens per forward pass (buffers)")
           ->capture_default_str();
       sub.add_option("--dram-gbps", f->dram_gbps, "use this DRAM read bandwidth (GB/s) instead of measuring");
       sub.add_option("--stream-mib", f->stream_mib, "the stream read probe's buffer in MiB")->capture_default_str();
       add_defer_experts_flag(sub, f->defer_experts);
       sub.add_flag("--remeasure", f->remeasure, "measure even when the cache has this machine");
       sub.add_flag("--json", f->json, "print one JSON object (keys: docs/CLI.md)");
       return [f] { return plan_command(*f); };
     }}};

}  // namespace
}  // namespace tandem::cli
