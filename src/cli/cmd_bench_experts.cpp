// `tandem bench experts --preset P [--quant Q] [--batch B] [--threads N] [--json]`: one MoE layer
// of a preset in memory, random top-k routing, timed through the CPU backend; the bandwidth it
// reaches against this machine's stream read bandwidth measured in the same run.
#include <memory>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/bench_command.hpp"
#include "cli/generation_flags.hpp"
#include "tandem/engine/bench/expert_bench.hpp"
#include "tandem/error.hpp"

namespace tandem::cli {
namespace {

struct ExpertsFlags {
  std::string preset;
  std::string quant = "q4_k_m";
  int64_t batch = 1;
  int threads = 0;
  double seconds = 2.0;
  uint64_t stream_mib = 1024;
  uint64_t seed = 1;
  std::string cpu_kernels;
  bool json = false;
};

CommandRun setup(CLI::App& sub) {
  auto flags = std::make_shared<ExpertsFlags>();
  sub.add_option("--preset", flags->preset, "the model whose MoE layer runs (as tandem synth --preset)")->required();
  sub.add_option("--quant", flags->quant, "q4_k_m (default), q5_k_m, q8_0, iq4_xs or bf16");
  sub.add_option("--batch", flags->batch, "tokens per step (default 1, at most 16384)");
  sub.add_option("-t,--threads", flags->threads, "threads (default 0: one per physical core)");
  sub.add_option("--seconds", flags->seconds, "time steps for at least this long (default 2)");
  sub.add_option("--stream-mib", flags->stream_mib, "the stream read probe's buffer in MiB (default 1024)");
  sub.add_option("--seed", flags->seed, "seed of the weights, inputs and routing (default 1)");
  add_cpu_kernels_flag(sub, flags->cpu_kernels);
  sub.add_flag("--json", flags->json, "print one JSON object");
  return [flags]() {
    ExpertBenchOptions options;
    options.preset = flags->preset;
    options.quant = synth_quant_from_name(flags->quant);
    options.batch = flags->batch;
    options.threads = flags->threads;
    options.min_seconds = flags->seconds;
    if (flags->stream_mib < 1 || flags->stream_mib > (uint64_t{1} << 20))
      throw Error(ErrorKind::invalid_argument, "--stream-mib " + std::to_string(flags->stream_mib) + " is outside 1..1048576");
    options.stream_bytes = flags->stream_mib << 20;
    options.seed = flags->seed;
    options.kernels = cpu_kernels_from_flag(flags->cpu_kernels);
    const ExpertBenchResult r = run_expert_bench(options);
    if (flags->json) {
      nlohmann::ordered_json j;
      j["preset"] = r.preset;
      j["quant"] = std::string(synth_quant_name(r.quant));
      j["batch"] = r.batch;
      j["threads"] = r.threads;
      j["cpu_kernels"] = std::string(cpu_kernels_name(options.kernels));
      j["cpu_isa"] = std::string(cpu_kernel_isa());
      j["experts"] = r.experts;
      j["top_k"] = r.top_k;
      j["hidden"] = r.hidden;
      j["moe_intermediate"] = r.moe_intermediate;
      j["gate_type"] = std::string(dtype_name(r.gate_type));
      j["up_type"] = std::string(dtype_name(r.up_type));
      j["down_type"] = std::string(dtype_name(r.down_type));
      j["steps"] = r.steps;
      j["seconds_per_step"] = r.seconds_per_step;
      j["expert_bytes_per_step"] = r.expert_bytes_per_step;
      j["achieved_gbps"] = r.achieved_gbps;
      j["stream_read_gbps"] = r.stream_read_gbps;
      j["ratio"] = r.ratio;
      j["layer_copies"] = r.layer_copies;
      j["tflops"] = r.tflops;
      j["repacked_bytes"] = r.repacked_bytes;
      fmt::print("{}\n", j.dump());
      return 0;
    }
    fmt::print("{} {} MoE layer: {} experts (top {}), {}x{} gate/up {} down {}, batch {}, {} threads\n", r.preset,
               synth_quant_name(r.quant), r.experts, r.top_k, r.hidden, r.moe_intermediate, dtype_name(r.gate_type),
               dtype_name(r.down_type), r.batch, r.threads);
    fmt::print("{:.3f} ms/step over {} steps, {:.1f} MB of experts read per step, {} cop{} of the layer in turn\n",
               r.seconds_per_step * 1e3, r.steps, r.expert_bytes_per_step / 1e6, r.layer_copies,
               r.layer_copies == 1 ? "y" : "ies");
    fmt::print("achieved {:.2f} GB/s, stream read {:.2f} GB/s, ratio {:.3f}, {:.3f} TFLOP/s\n", r.achieved_gbps,
               r.stream_read_gbps, r.ratio, r.tflops);
    return 0;
  };
}

const RegisterBench registered{{"experts", "time one MoE layer of a preset against the stream read bandwidth", setup}};

}  // namespace
}  // namespace tandem::cli
