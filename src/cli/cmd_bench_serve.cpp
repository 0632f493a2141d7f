// `tandem bench serve -m MODEL [--clients 1,4,16,32] [--json]`: throughput, time to first token and
// inter-token latency per concurrency, through `tandem serve`'s HTTP server on loopback (--direct:
// straight to the engine's scheduler, the ceiling of the HTTP figures).
#include <fmt/core.h>
#include <signal.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/bench_command.hpp"
#include "cli/serve_flags.hpp"
#include "tandem/server/serve_bench.hpp"

namespace tandem::cli {
namespace {

struct ServeBenchFlags : ServeFlags {
  server::ServeBenchOptions bench;
  bool json = false;
  bool parallel_given = false;
};

nlohmann::ordered_json percentiles_json(const server::Percentiles& p) {
  return {{"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"mean", p.mean}};
}

int run(ServeBenchFlags& flags) {
  flags.validate();
  auto& b = flags.bench;
  if (b.clients.empty()) throw Error(ErrorKind::invalid_argument, "--clients lists no concurrency");
  const int64_t most = *std::max_element(b.clients.begin(), b.clients.end());
  if (!flags.parallel_given) flags.parallel = std::clamp<int64_t>(most, 1, 1024);
  b.parallel = flags.parallel;
  b.max_batch_tokens = flags.max_batch_tokens;
  signal(SIGPIPE, SIG_IGN);
  LoadOptions load = flags.load_options();
  // Each sequence needs its prompt and reply; a small context keeps the KV pool small.
  if (flags.context_tokens == 0) load.max_context_tokens = b.prompt_tokens + b.max_tokens + 16;
  const auto engine = Engine::load(flags.model_path, load);
  const auto rows = server::run_serve_bench(*engine, b);
  if (flags.json) {
    nlohmann::ordered_json j;
    j["model"] = flags.model_path;
    j["parallel"] = flags.parallel;
    j["max_batch_tokens"] = engine->options().max_batch_tokens;
    j["prompt_tokens"] = b.prompt_tokens;
    j["max_tokens"] = b.max_tokens;
    j["requests_per_client"] = b.requests_per_client;
    j["repetitions"] = b.repetitions;
    j["direct"] = b.direct;
    j["results"] = nlohmann::ordered_json::array();
    for (const auto& r : rows)
      j["results"].push_back({{"clients", r.clients},
                              {"requests", r.requests},
                              {"seconds", r.seconds},
                              {"output_tokens", r.output_tokens},
                              {"cached_prompt_tokens", r.cached_prompt_tokens},
                              {"output_tokens_per_second", r.output_tokens_per_second},
                              {"decode_tokens_per_second", r.decode_tokens_per_second},
                              {"speedup", r.speedup},
                              {"decode_speedup", r.decode_speedup},
                              {"ttft_ms", percentiles_json(r.ttft_ms)},
                              {"itl_ms", percentiles_json(r.itl_ms)}});
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print(
      "model {}: prompt {} tokens, {} tokens per reply, {} requests per client, parallel {}, median of {}{}\n",
      flags.model_path, b.prompt_tokens, b.max_tokens, b.requests_per_client, flags.parallel, b.repetitions,
      b.direct ? ", direct to the scheduler (no HTTP)" : "");
  fmt::print(
      "| clients | requests | output tok/s | speedup | decode tok/s | decode speedup | TTFT p50/p90/p99 ms | "
      "ITL "
      "p50/p90/p99 ms |\n");
  fmt::print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& r : rows)
    fmt::print(
        "| {} | {} | {:.1f} | {:.2f}x | {:.1f} | {:.2f}x | {:.1f} / {:.1f} / {:.1f} | {:.2f} / {:.2f} / "
        "{:.2f} |\n",
        r.clients, r.requests, r.output_tokens_per_second, r.speedup, r.decode_tokens_per_second,
        r.decode_speedup, r.ttft_ms.p50, r.ttft_ms.p90, r.ttft_ms.p99, r.itl_ms.p50, r.itl_ms.p90,
        r.itl_ms.p99);
  return 0;
}

const RegisterBench registered{
    {"serve", "throughput, TTFT and inter-token latency of `tandem serve` per number of concurrent clients",
     [](CLI::App& sub) -> CommandRun {
       auto flags = std::make_shared<ServeBenchFlags>();
       flags->add_to(sub);
       CLI::Option* parallel = sub.get_option("--parallel");
       parallel->description("sequences decoded at once (default: the largest --clients)");
       sub.add_option("--clients", flags->bench.clients, "concurrencies to measure, comma-separated")
           ->delimiter(',')
           ->capture_default_str();
       sub.add_option("--requests", flags->bench.requests_per_client, "requests each client sends in turn")
           ->capture_default_str();
       sub.add_option("--prompt-tokens", flags->bench.prompt_tokens, "tokens of each (random) prompt")
           ->capture_default_str();
       sub.add_option("--max-tokens", flags->bench.max_tokens, "tokens of each reply (EOS ignored)")
           ->capture_default_str();
       sub.add_option("--seed", flags->bench.seed, "seed of the random prompts")->capture_default_str();
       sub.add_option("-r,--repetitions", flags->bench.repetitions,
                      "sweeps to run (levels interleaved); each level reports its median")
           ->capture_default_str();
       sub.add_flag("--direct", flags->bench.direct,
                    "submit the same sequences to the engine's scheduler in-process, without HTTP: what batching "
                    "alone gives (the ceiling of the HTTP figures)");
       sub.add_flag("--json", flags->json, "print one JSON object");
       return [flags, parallel] {
         flags->parallel_given = parallel->count() > 0;
         return run(*flags);
       };
     }}};

}  // namespace
}  // namespace tandem::cli
