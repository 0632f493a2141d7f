// `tandem bench kv -m MODEL --prompt-tokens N --cached-tokens M [--json]`: time to first token
// of an N-token prompt cold, with M of its tokens cached in the host tier (the prefix cache; with
// attention on a GPU, `--placement`, also in VRAM) and with them read back from the SSD tier
// (`--kv-disk DIR`, page cache dropped first), the decode
// speed after each, and the compute-bound limit of the speed-up (tandem/engine/bench/kv_bench.hpp).
#include <memory>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/bench_command.hpp"
#include "cli/generation_flags.hpp"
#include "tandem/engine/bench/kv_bench.hpp"

namespace tandem::cli {
namespace {

struct KvFlags {
  KvBenchOptions options;
  std::string kv_type;
  bool json = false;
};

CommandRun setup(CLI::App& sub) {
  auto flags = std::make_shared<KvFlags>();
  KvBenchOptions& opt = flags->options;
  sub.add_option("-m,--model", opt.model_path, "GGUF file or HF model folder")->required();
  sub.add_option("--prompt-tokens", opt.prompt_tokens, "prompt length N (default 4064)");
  sub.add_option("--cached-tokens", opt.cached_tokens, "tokens of the prompt already cached, M < N (default 3936)");
  sub.add_option("--decode-tokens", opt.decode_tokens, "decode steps timed after each prefill (default 32)");
  sub.add_option("-t,--threads", opt.threads, "threads (default 0: one per physical core)");
  sub.add_option("-r,--repetitions", opt.reps, "repetitions, median reported (default 3)");
  sub.add_option("--seed", opt.seed, "seed of the random token ids (default 1)");
  add_kv_type_flag(sub, flags->kv_type);
  sub.add_option("--kv-disk", opt.disk_dir,
                 "directory for the SSD tier's records (a fresh subdirectory, removed afterwards; default: the "
                 "system's temporary directory, often tmpfs — memory, not a disk)");
  sub.add_option(
      "--placement", opt.placement,
      "where weights and attention run, as for run (e.g. '*=cuda:0'); with attention on a GPU the prefix "
      "is also timed from VRAM (ttft_device_s), and the host figure reads it from pinned host memory");
  sub.add_flag("--json", flags->json, "print one JSON object");
  return [flags]() {
    KvBenchOptions o = flags->options;
    o.kv_type = kv_type_from_flag(flags->kv_type);
    const KvBenchResult r = run_kv_bench(o);
    const double host_speedup = r.ttft_cold_s / r.ttft_host_s;
    const double disk_speedup = r.ttft_cold_s / r.ttft_disk_s;
    if (flags->json) {
      nlohmann::ordered_json j;
      j["model"] = o.model_path;
      j["prompt_tokens"] = o.prompt_tokens;
      j["cached_tokens"] = r.cached_tokens;
      j["kv_type"] = kv_type_name(o.kv_type);
      j["ttft_cold_s"] = r.ttft_cold_s;
      j["ttft_host_s"] = r.ttft_host_s;
      j["ttft_disk_s"] = r.ttft_disk_s;
      if (r.device_tier) {
        j["ttft_device_s"] = r.ttft_device_s;
        j["speedup_device"] = r.ttft_cold_s / r.ttft_device_s;
        j["decode_tok_s_device"] = r.decode_tok_s_device;
      }
      j["speedup_host"] = host_speedup;
      j["speedup_disk"] = disk_speedup;
      j["speedup_limit"] = r.speedup_limit;
      j["speedup_host_of_limit"] = host_speedup / r.speedup_limit;
      j["speedup_disk_of_limit"] = disk_speedup / r.speedup_limit;
      j["decode_tok_s_cold"] = r.decode_tok_s_cold;
      j["decode_tok_s_host"] = r.decode_tok_s_host;
      j["decode_tok_s_disk"] = r.decode_tok_s_disk;
      j["decode_cost_host"] = 1.0 - r.decode_tok_s_host / r.decode_tok_s_cold;
      j["decode_cost_disk"] = 1.0 - r.decode_tok_s_disk / r.decode_tok_s_cold;
      j["disk_fs"] = r.disk_fs;
      j["disk_io"] = r.disk_io;
      j["disk_read_direct"] = r.disk_read_direct;
      j["disk_page_cache_resident"] = r.disk_page_cache_resident;
      fmt::print("{}\n", j.dump());
      return 0;
    }
    fmt::print("| tier | TTFT (s) | speed-up | of the compute-bound limit ({:.1f}x) | decode tok/s |\n", r.speedup_limit);
    fmt::print("| --- | ---: | ---: | ---: | ---: |\n");
    fmt::print("| cold | {:.4f} | 1.00x | | {:.2f} |\n", r.ttft_cold_s, r.decode_tok_s_cold);
    if (r.device_tier) {
      const double device_speedup = r.ttft_cold_s / r.ttft_device_s;
      fmt::print("| device ({} of {} cached in VRAM) | {:.4f} | {:.2f}x | {:.2f} | {:.2f} |\n",
                 r.cached_tokens, o.prompt_tokens, r.ttft_device_s, device_speedup,
                 device_speedup / r.speedup_limit, r.decode_tok_s_device);
    }
    fmt::print("| host ({} of {} cached) | {:.4f} | {:.2f}x | {:.2f} | {:.2f} |\n", r.cached_tokens, o.prompt_tokens,
               r.ttft_host_s, host_speedup, host_speedup / r.speedup_limit, r.decode_tok_s_host);
    fmt::print("| disk ({} of {} cached; {}, {}, {:.0f} % of it in the page cache) | {:.4f} | {:.2f}x | {:.2f} | {:.2f} |\n",
               r.cached_tokens, o.prompt_tokens, r.disk_fs, r.disk_io, 100 * r.disk_page_cache_resident, r.ttft_disk_s,
               disk_speedup, disk_speedup / r.speedup_limit, r.decode_tok_s_disk);
    return 0;
  };
}

const RegisterBench registered{CommandSpec{
    "kv", "time to first token with a prompt prefix cached (host tier, SSD tier) against cold, and decode speed", setup}};

}  // namespace
}  // namespace tandem::cli
