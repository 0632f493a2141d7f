// `tandem bench model -m FILE [-p 512] [-n 128] [-t N] [-r REPS] [--placement R] [--vram-budget B]
// [--kv-type T] [--json]`: prefill and decode
// speed as llama-bench measures them, the decode roofline implied by the file and this machine's
// stream bandwidth, and how widely the routers spread tokens over the experts.
#include <filesystem>
#include <memory>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/bench_command.hpp"
#include "cli/generation_flags.hpp"
#include "tandem/engine/bench/model_bench.hpp"
#include "tandem/engine/placement.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/error.hpp"

namespace tandem::cli {
namespace {

struct ModelFlags {
  ModelBenchOptions options;
  uint64_t stream_mib = 1024;
  std::string cpu_kernels;
  std::string vram_total;
  std::string kv_type;
  bool json = false;
};

CommandRun setup(CLI::App& sub) {
  auto flags = std::make_shared<ModelFlags>();
  ModelBenchOptions& opt = flags->options;
  sub.add_option("-m,--model", opt.model_path, "GGUF file or HF model folder")->required();
  sub.add_option("-p,--n-prompt", opt.prompt_tokens, "prompt tokens of the prefill test (default 512)");
  sub.add_option("-n,--n-gen", opt.gen_tokens, "decode steps of the generation test (default 128)");
  sub.add_option("-d,--n-depth", opt.depth,
                 "tokens already in the cache when each test starts, as llama-bench's -d (default 0; not timed)");
  sub.add_option("-t,--threads", opt.threads, "threads (default 0: one per physical core)");
  sub.add_option("-r,--repetitions", opt.reps, "repetitions of each test (default 5)");
  sub.add_option("--spread-tokens", opt.spread_tokens,
                 "tokens of the prompt that measures the routing spread (default 4096; 0 skips it)");
  sub.add_option("--stream-mib", flags->stream_mib, "the stream read probe's buffer in MiB (default 1024)");
  sub.add_option("--seed", opt.seed, "seed of the random token ids (default 1)");
  add_cpu_kernels_flag(sub, flags->cpu_kernels);
  add_placement_flag(sub, opt.placement);
  add_placement_shorthand_flags(sub, opt.placement_flags, flags->vram_total, /*with_ngl=*/false);
  add_defer_experts_flag(sub, opt.defer_experts);
  add_ubatch_flag(sub, opt.ubatch);
  add_kv_type_flag(sub, flags->kv_type);
  sub.add_flag("--json", flags->json, "print one JSON object");
  return [flags]() {
    ModelBenchOptions o = flags->options;
    if (flags->stream_mib < 1 || flags->stream_mib > (uint64_t{1} << 20))
      throw Error(ErrorKind::invalid_argument, "--stream-mib " + std::to_string(flags->stream_mib) + " is outside 1..1048576");
    o.stream_bytes = flags->stream_mib << 20;
    o.kernels = cpu_kernels_from_flag(flags->cpu_kernels);
    o.kv_type = kv_type_from_flag(flags->kv_type);
    o.defer_experts = defer_experts_from_flag(o.defer_experts);
    o.ubatch = ubatch_from_flag(o.ubatch, 0);  // the range check naming the flag; the bench cuts it to its context
    o.placement_flags.vram_total_bytes = vram_total_from_flag(flags->vram_total);
    o.gpu_by_default = true;
    const ModelBenchResult r = run_model_bench(o);
    // What `tandem plan` predicts for the bench's placement at the DRAM bandwidth measured here and
    // the GPU's cached (or measured) HBM and PCIe rates.
    MachineRates rates;
    rates.dram_read_gbps = r.stream_read_gbps;
    rates.threads = r.threads;
    rates.cpu_gflops = kAssumedCpuGflopsPerCore * r.threads;
    const ModelFiles files = open_model_files(o.model_path);
    const Weights weights = bind_weights(files);
    const Placement placement = Placement::parse(r.placement, /*gpu_available=*/false);  // as the engine resolved it
    bool on_gpu = false;
    for (const PlacementRule& rule : placement.rules()) on_gpu = on_gpu || rule.device.kind == DeviceKind::cuda;
    double pcie_h2d = 0, pcie_d2h = 0;
    if (on_gpu) load_gpu_rates(rates, false, pcie_h2d, pcie_d2h);
    const PerformancePrediction plan =
        predict_performance(files.config, weights, placement, rates, r.expert_cache_per_layer, o.defer_experts);
    const double plan_decode_tok_s = plan.decode_tok_s;
    // ... and for the bench's prompt in the engine's passes after its -d context, streaming as the
    // engine resolved it.
    rates.stream_experts_min_tokens = r.stream_experts_min_tokens;
    const double plan_prefill_tok_s = predict_prompt_prefill_tok_s(files.config, weights, placement, rates,
                                                                   o.prompt_tokens, r.ubatch, o.depth);
    // With every weight on the GPU, the decode roofline is the GPU's: HBM bytes per token at its rate.
    const bool all_gpu = on_gpu && plan.decode_bytes_cpu == 0 && plan.decode_bytes_gpu > 0;
    const double hbm_roofline_tok_s =
        all_gpu ? rates.vram_read_gbps * 1e9 / static_cast<double>(plan.decode_bytes_gpu) : 0.0;
    for (const std::string& w : r.warnings) fmt::print(stderr, "tandem: warning: {}\n", w);
    if (flags->json) {
      nlohmann::ordered_json j;
      j["model"] = o.model_path;
      j["threads"] = r.threads;
      j["cpu_kernels"] = std::string(cpu_kernels_name(o.kernels));
      j["cpu_isa"] = std::string(cpu_kernel_isa());
      j["kv_type"] = std::string(kv_type_name(o.kv_type));
      j["n_prompt"] = o.prompt_tokens;
      j["n_gen"] = o.gen_tokens;
      j["n_depth"] = o.depth;
      j["depth_passes"] = r.depth_passes;
      j["repetitions"] = o.reps;
      j["prefill_tok_s"] = r.prefill_tok_s;
      j["prefill_tok_s_sd"] = r.prefill_tok_s_sd;
      j["decode_tok_s"] = r.decode_tok_s;
      j["decode_tok_s_sd"] = r.decode_tok_s_sd;
      j["decode_roofline_tok_s"] = r.decode_roofline_tok_s;
      j["decode_roofline_ratio"] = r.decode_tok_s / r.decode_roofline_tok_s;
      j["decode_bytes_per_token"] = r.decode_bytes_per_token;
      if (all_gpu) {
        j["hbm_read_gbps"] = rates.vram_read_gbps;
        j["decode_hbm_roofline_tok_s"] = hbm_roofline_tok_s;
        j["decode_hbm_roofline_ratio"] = r.decode_tok_s / hbm_roofline_tok_s;
      }
      j["plan_decode_tok_s"] = plan_decode_tok_s;
      j["plan_decode_fraction"] = r.decode_tok_s / plan_decode_tok_s;
      j["plan_prefill_tok_s"] = plan_prefill_tok_s;
      j["plan_prefill_fraction"] = r.prefill_tok_s / plan_prefill_tok_s;
      j["stream_read_gbps"] = r.stream_read_gbps;
      j["experts_hit_fraction"] = r.experts_hit_fraction;
      j["experts_hit_uniform"] = r.experts_hit_uniform;
      j["experts_hit_per_layer"] = r.experts_hit_per_layer;
      j["spread_tokens"] = o.spread_tokens;
      j["model_bytes"] = r.model_bytes;
      j["parameters"] = r.parameters;
      j["placement"] = o.placement;
      j["placement_resolved"] = r.placement;
      j["vram_budget"] = o.placement_flags.vram_budget;
      j["defer_experts"] = o.defer_experts;
      j["expert_cache_per_layer"] = r.expert_cache_per_layer;
      j["expert_cache_layers"] = r.expert_cache_layers;
      j["expert_cache_held_fraction"] = r.expert_cache_held_fraction;
      j["ubatch"] = r.ubatch;
      j["prefill_passes"] = r.prefill_passes;
      fmt::print("{}\n", j.dump());
      return 0;
    }
    const std::string name = std::filesystem::path(o.model_path).filename().string();
    fmt::print("| model | size | params | threads | test | t/s |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    const std::string size = fmt::format("{:.2f} GiB", static_cast<double>(r.model_bytes) / (1u << 30));
    const std::string params = fmt::format("{:.2f} B", static_cast<double>(r.parameters) / 1e9);
    const std::string at_depth = o.depth > 0 ? fmt::format(" @ d{}", o.depth) : "";  // llama-bench's spelling
    fmt::print("| {} | {} | {} | {} | pp{}{} | {:.2f} ± {:.2f} |\n", name, size, params, r.threads, o.prompt_tokens,
               at_depth, r.prefill_tok_s, r.prefill_tok_s_sd);
    fmt::print("| {} | {} | {} | {} | tg{}{} | {:.2f} ± {:.2f} |\n", name, size, params, r.threads, o.gen_tokens,
               at_depth, r.decode_tok_s, r.decode_tok_s_sd);
    fmt::print("prefill in passes of up to {} tokens (--ubatch): {} per pp{} prompt\n", r.ubatch, r.prefill_passes,
               o.prompt_tokens);
    fmt::print("decode roofline {:.1f} tok/s ({:.1f} MB read per token at {:.2f} GB/s stream read); decode at {:.3f} of it\n",
               r.decode_roofline_tok_s, r.decode_bytes_per_token / 1e6, r.stream_read_gbps,
               r.decode_tok_s / r.decode_roofline_tok_s);
    if (all_gpu)
      fmt::print("decode HBM roofline {:.1f} tok/s ({:.1f} MB read per token at {:.0f} GB/s HBM read); decode at {:.3f} of it\n",
                 hbm_roofline_tok_s, static_cast<double>(plan.decode_bytes_gpu) / 1e6, rates.vram_read_gbps,
                 r.decode_tok_s / hbm_roofline_tok_s);
    fmt::print("plan_decode_tok_s {:.1f} (tandem plan's prediction for this placement and these rates); decode at {:.3f} of it\n",
               plan_decode_tok_s, r.decode_tok_s / plan_decode_tok_s);
    fmt::print("plan_prefill_tok_s {:.1f} (tandem plan's prediction for this prompt in passes of up to {} tokens); "
               "prefill at {:.3f} of it\n",
               plan_prefill_tok_s, r.ubatch, r.prefill_tok_s / plan_prefill_tok_s);
    if (o.spread_tokens > 0)
      fmt::print("experts hit per MoE layer over {} tokens: {:.3f} (uniform routing: {:.3f})\n", o.spread_tokens,
                 r.experts_hit_fraction, r.experts_hit_uniform);
    return 0;
  };
}

const RegisterBench registered{{"model", "prefill and decode tok/s as llama-bench measures them, with the decode roofline", setup}};

}  // namespace
}  // namespace tandem::cli
