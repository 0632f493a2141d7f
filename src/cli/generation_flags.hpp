#pragma once
// Flags shared by `tandem run` and `tandem chat`: sampling, length, stops, and load options
// (`--placement` also by `tandem eval`).
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli/llama_compat.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/retention.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/text/sampler.hpp"

namespace tandem::cli {

// `--placement RULES`: the one definition, used by run, chat (through GenerationFlags), serve,
// perplexity, bench model and plan (`gpu_by_default`: LoadOptions::gpu_by_default) and eval (false:
// eval compares logits with the CPU's, so it stays there unless told).
inline CLI::Option* add_placement_flag(CLI::App& app, std::string& rules, bool gpu_by_default = true) {
  return app.add_option("--placement", rules,
                        gpu_by_default
                            ? "where weights live: rules like 'experts=cpu,*=cuda:0' (first match wins) or @FILE; "
                              "default: with a usable GPU, routed experts on cpu and the rest on cuda:0 (all on cpu "
                              "when an option needs the CPU's attention or it does not fit; a notice says why); "
                              "without one, all on cpu (docs/PLACEMENT.md)"
                            : "where weights live: rules like 'experts=cpu,*=cuda:0' (first match wins) or @FILE; "
                              "default: all on cpu (docs/PLACEMENT.md)");
}

// llama.cpp's placement spellings and the VRAM budget (docs/PLACEMENT.md), into `flags`; `-ngl`
// is rewritten to --n-gpu-layers and `-ot` to --override-tensor before parsing. `with_ngl`: also
// register --n-gpu-layers (run and chat have it among the llama.cpp spellings).
inline void add_placement_shorthand_flags(CLI::App& app, PlacementFlags& flags, std::string& vram_total,
                                          bool with_ngl) {
  if (with_ngl)
    app.add_option("--n-gpu-layers,--gpu-layers", flags.n_gpu_layers,
                   "llama.cpp's -ngl: the last N layers on cuda:0 (N > layers, -1 or 'all': everything)");
  app.add_flag("--cpu-moe", flags.cpu_moe, "all routed experts on the CPU (the rest on the GPU when one is usable)");
  app.add_option("--n-cpu-moe", flags.n_cpu_moe, "routed experts of the first N layers on the CPU");
  app.add_option("--override-tensor", flags.override_tensor,
                 "llama.cpp's -ot REGEX=DEVICE[,...]: tensors whose file name matches go to DEVICE (CPU, CUDA0, "
                 "cuda:N); repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--vram-budget", flags.vram_budget,
                 "GPU memory to use (24G, 500M, 80%): the non-expert part, KV and buffers first, then routed "
                 "experts layer by layer");
  app.add_option("--expert-cache", flags.expert_cache,
                 "GPU expert cache: each CPU-expert layer's most routed experts held in VRAM and run there. "
                 "Default: with --vram-budget, what whole expert layers leave of it; 'off'; or a size (8G, "
                 "50% of the budget) taken before whole layers");
  app.add_option("--vram-total", vram_total, "the card's memory for planning (default: asked from cuda:0)");
}

// --vram-total's text as bytes ("" = ask the card).
inline uint64_t vram_total_from_flag(const std::string& text) {
  if (text.empty()) return 0;
  try {
    return parse_vram_budget(text, 0);
  } catch (const Error&) {
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--vram-total '{}': expected bytes with an optional K/M/G/T suffix (80G)", text));
  }
}

// `--kv-type f32|f16|bf16|fp8|int8|int4|int4:64`: the one definition, used by every command that runs a model
// (run, chat, eval, perplexity). An empty string means the default (LoadOptions::kv_type, f16).
inline CLI::Option* add_kv_type_flag(CLI::App& app, std::string& type) {
  return app.add_option(
      "--kv-type", type,
      "KV cache element type: f16 (default, as llama.cpp), bf16, f32 (exact float32 "
      "attention inputs; twice the memory), or quantised: fp8 (E4M3), int8, int4 (keys per "
      "channel, values per token in groups of 32; int4:32 the same), int4:64 (values in groups "
      "of 64; docs/KV.md)");
}

inline CLI::Option* add_cpu_kernels_flag(CLI::App& app, std::string& kernels) {
  return app.add_option("--cpu-kernels", kernels,
                        "CPU kernels: fast (quantised SIMD kernels, the default) or reference "
                        "(dequantise-then-float32, to compare against)");
}

// `--defer-experts N`: expert deferral (LoadOptions::defer_experts), used by every command that
// runs a model (run, chat, eval, perplexity, bench model). N at least the model's experts per
// token is refused when the model loads.
inline CLI::Option* add_defer_experts_flag(CLI::App& app, int64_t& defer) {
  return app.add_option("--defer-experts", defer,
                        "expert deferral: each token's N lowest-weighted routed experts join the residual stream "
                        "one layer later (more CPU/GPU overlap; costs some accuracy, docs/PERF.md); N below the "
                        "model's experts per token, 0 = off")
      ->capture_default_str();
}

// `--ubatch N` (llama.cpp's -ub, rewritten): tokens per forward pass, so a longer prompt runs in
// chunks of N (LoadOptions::max_batch_tokens); used by run, chat and bench model (serve's
// --max-batch-tokens takes the same spellings). 0 = automatic (LoadOptions::kBatchTokensAutomatic).
inline CLI::Option* add_ubatch_flag(CLI::App& app, int64_t& ubatch) {
  return app.add_option("--ubatch,--ubatch-size", ubatch,
                        "tokens per forward pass: longer prompts run in chunks of N (llama.cpp's -ub); larger passes "
                        "read each expert once for more tokens; 0 = automatic: " +
                            std::to_string(LoadOptions::kDefaultBatchTokens) + ", or " +
                            std::to_string(LoadOptions::kStreamedBatchTokens) +
                            " when routed experts stream to the GPU (at most the context)");
}

// The --ubatch value as LoadOptions::max_batch_tokens (0 = automatic; never above a known context:
// a pass longer than the context would only size buffers no chunk fills); Error(invalid_argument)
// naming the flag.
inline int64_t ubatch_from_flag(int64_t ubatch, int64_t context_tokens) {
  constexpr int64_t kMax = int64_t{1} << 20;
  if (ubatch < 0 || ubatch > kMax)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--ubatch must be within [1, {}] tokens per pass (0 = automatic), not {}", kMax, ubatch));
  if (ubatch == LoadOptions::kBatchTokensAutomatic) return ubatch;  // the engine caps it at the context
  return context_tokens > 0 ? std::min(ubatch, context_tokens) : ubatch;
}

// The --defer-experts value checked for sign; Error(invalid_argument) naming the flag.
inline int64_t defer_experts_from_flag(int64_t defer) {
  if (defer < 0)
    throw Error(ErrorKind::invalid_argument, fmt::format("--defer-experts must be 0 (off) or more, not {}", defer));
  return defer;
}

// The --cpu-kernels value ("" = fast); Error(invalid_argument) naming the flag.
inline CpuKernels cpu_kernels_from_flag(const std::string& kernels) {
  if (kernels.empty()) return LoadOptions{}.cpu_kernels;
  const auto parsed = parse_cpu_kernels(kernels);
  if (!parsed)
    throw Error(ErrorKind::invalid_argument, fmt::format("--cpu-kernels must be fast or reference, not '{}'", kernels));
  return *parsed;
}

// The --kv-type value as a KvType ("" = the default); Error(invalid_argument) naming the flag.
inline KvType kv_type_from_flag(const std::string& type) {
  if (type.empty()) return LoadOptions{}.kv_type;
  if (!is_kv_type_name(type))
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format("--kv-type must be f32, f16, bf16, fp8, int8 or int4, not '{}' (int4 takes a group "
                    "size: int4:32, the default, or int4:64)",
                    type));
  return parse_kv_type(type);
}

// `--kv-policy full|sinks:S,W|h2o:BUDGET|snapkv:BUDGET`: the retention policy of the session's KV
// cache (run, chat, perplexity). An empty string means full.
inline CLI::Option* add_kv_policy_flag(CLI::App& app, std::string& policy) {
  return app.add_option("--kv-policy", policy,
                        "KV retention: full (default), sinks:S,W (first S + last W tokens), h2o:BUDGET (heavy "
                        "hitters + recent), snapkv:BUDGET (observation-window selection); docs/KV.md");
}

// The --kv-policy value checked ("" = full); Error(invalid_argument) naming the flag.
inline std::string kv_policy_from_flag(const std::string& policy) {
  if (policy.empty()) return policy;
  try {
    return RetentionPolicy::parse(policy).to_string();
  } catch (const Error& e) {
    throw Error(ErrorKind::invalid_argument, fmt::format("--kv-policy: {}", e.what()));
  }
}

// `--override-kv KEY=TYPE:VALUE` (repeatable): the one definition, used by every command that
// reads a model's config (run, chat, eval, inspect, perplexity).
inline CLI::Option* add_override_kv_flag(CLI::App& app, std::vector<std::string>& specs) {
  return app.add_option("--override-kv", specs,
                        "override GGUF metadata key before the config is read, as llama.cpp: KEY=TYPE:VALUE "
                        "with TYPE int, float, bool or str (repeatable), e.g. "
                        "qwen2moe.rope.freq_base=float:1000000")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
}

// Parses the specs; throws Error(invalid_argument) for a malformed one.
inline ModelOverrides model_overrides_from(const std::vector<std::string>& specs) {
  ModelOverrides o;
  for (const auto& spec : specs) o.metadata.push_back(parse_metadata_override(spec));
  return o;
}

// A context past the model's trained one runs (RoPE extrapolates) but its quality is untested: say so.
inline void warn_past_trained_context(const ModelConfig& config, int64_t tokens, const char* what) {
  if (config.max_position_embeddings > 0 && tokens > config.max_position_embeddings)
    fmt::print(stderr,
               "tandem: warning: {} ({} tokens) is longer than the model's trained context ({} tokens); "
               "output past it may degrade\n",
               what, tokens, config.max_position_embeddings);
}

// `--kv-disk DIR --kv-disk-size SIZE`: the prefix cache's SSD tier (docs/KV.md), for the commands
// whose sessions use the prefix cache (run, chat, serve). A directory turns the cache on.
// `--kv-host-size SIZE`: its host tier when attention runs on a GPU.
struct KvDiskFlags {
  std::string dir, size, host_size;

  void add_to(CLI::App& app) {
    app.add_option("--kv-disk", dir,
                   "directory for the KV prefix cache's SSD tier: prompt prefixes' KV blocks are kept there and "
                   "reused by later runs of the same model and KV type (turns the prefix cache on)");
    app.add_option("--kv-disk-size", size,
                   "bytes the SSD tier may take, least recently used records deleted past it (64G, 512M; default: "
                   "64G or half the file system, whichever is less)");
    app.add_option(
        "--kv-host-size", host_size,
        "pinned host memory for the prefix cache's blocks that the GPU's KV pool lets go of, when attention "
        "runs on a GPU (8G, 512M; 0 = none; default: the GPU's KV pool size, at most a quarter of RAM)");
  }

  // Checks the directory (exists, is one, writable) and the sizes; Error(invalid_argument) naming
  // the flag. Fills LoadOptions::kv_disk_dir/kv_disk_bytes/kv_host_bytes.
  void apply(LoadOptions& o) const {
    if (!host_size.empty())
      o.kv_host_bytes = host_size == "0" ? 0 : parse_byte_size(host_size, "--kv-host-size");
    if (dir.empty()) {
      if (!size.empty()) throw Error(ErrorKind::invalid_argument, "--kv-disk-size needs --kv-disk DIR");
      return;
    }
    KvDiskTier::check_directory(dir);
    const uint64_t total = KvDiskTier::file_system_bytes(dir);
    uint64_t bytes = uint64_t{64} << 30;
    if (!size.empty())
      bytes = parse_byte_size(size, "--kv-disk-size");
    else if (total > 0)
      bytes = std::min(bytes, total / 2);
    if (total > 0 && bytes > total)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--kv-disk-size {} is larger than the file system holding '{}' ({:.2f} GiB)", size, dir,
                              static_cast<double>(total) / (1 << 30)));
    o.kv_disk_dir = dir;
    o.kv_disk_bytes = bytes;
  }
};

// One line for --stats: the host tier's blocks and hits.
inline std::string kv_host_summary(const KvHostStats& s) {
  return fmt::format(
      "[kv host: {} of {} blocks ({:.1f} MiB pinned); {} blocks copied back, {} stored, {} evicted]",
      s.blocks, s.capacity_blocks, static_cast<double>(s.capacity_bytes) / (1 << 20), s.loaded, s.stored,
      s.evicted);
}

// One line for --stats: which I/O the tier uses and what it did.
inline std::string kv_disk_summary(const KvDiskStats& s) {
  return fmt::format(
      "[kv disk: {}; {} records ({:.1f} MiB), {} found at start; {} blocks read back, {} written, {} write failures; "
      "rejected {} corrupt, {} truncated, {} foreign; {} evicted]",
      s.io, s.records, static_cast<double>(s.bytes) / (1 << 20), s.found_at_start, s.loaded, s.written,
      s.write_failures, s.rejected_corrupt, s.rejected_truncated, s.rejected_foreign, s.evicted);
}

struct GenerationFlags {
  std::string model_path;
  int64_t max_new_tokens;
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int64_t seed = -1;  // < 0: a random seed (llama.cpp's -s -1)
  std::vector<std::string> stops;
  bool ignore_eos = false;
  int threads = 0;
  int64_t context_tokens = 0;  // 0: the model's trained context, at most 4096
  std::string placement;  // LoadOptions::placement
  PlacementFlags placement_flags;  // LoadOptions::placement_flags (-ngl comes through llama)
  std::string vram_total;
  std::vector<std::string> override_kv;
  std::string kv_type;  // --kv-type; "" = default, or llama.cpp's -ctk/-ctv when both name it
  std::string kv_policy;  // --kv-policy; "" = full
  std::string cpu_kernels;  // --cpu-kernels; "" = fast
  int64_t defer_experts = 0;  // --defer-experts; 0 = off
  int64_t ubatch = 0;         // --ubatch; 0 = automatic
  KvDiskFlags kv_disk;
  bool stats = false;  // print the speed line even when stderr is not a terminal
  LlamaCompatFlags llama;

  explicit GenerationFlags(int64_t default_max_new_tokens) : max_new_tokens(default_max_new_tokens) {}

  void add_to(CLI::App& app) {
    app.add_option("-m,--model", model_path, "GGUF file or HF model folder")->required();
    app.add_option("-n,--max-tokens,--n-predict", max_new_tokens, "tokens to generate at most (-1: until EOS)")
        ->capture_default_str();
    app.add_option("--temp", temperature, "temperature, 0 = greedy")->capture_default_str();
    app.add_option("--top-k", top_k, "keep the k most likely tokens, 0 = off")->capture_default_str();
    app.add_option("--top-p", top_p, "nucleus: smallest set with probability >= p, 1 = off")
        ->capture_default_str();
    app.add_option("--min-p", min_p, "drop tokens below min_p x the best one's probability, 0 = off")
        ->capture_default_str();
    app.add_option("--repeat-penalty", repeat_penalty, "HF repetition penalty, 1 = off")
        ->capture_default_str();
    app.add_option("--repeat-last-n", repeat_last_n, "tokens the penalties look back at, -1 = all")
        ->capture_default_str();
    app.add_option("--frequency-penalty", frequency_penalty, "OpenAI frequency penalty")
        ->capture_default_str();
    app.add_option("--presence-penalty", presence_penalty, "OpenAI presence penalty")->capture_default_str();
    app.add_option("-s,--seed", seed, "RNG seed (same seed, same text); -1 = random")->capture_default_str();
    app.add_option("--stop", stops, "stop when the text contains this (repeatable; not printed)")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    app.add_flag("--ignore-eos", ignore_eos, "keep generating past EOS tokens");
    app.add_option("-t,--threads", threads, "CPU threads, 0 = one per physical core")->capture_default_str();
    app.add_option("-c,--ctx,--ctx-size", context_tokens,
                   "context length of the session in tokens (0 = the model's trained context, at most 4096)")
        ->capture_default_str();
    add_placement_flag(app, placement);
    add_placement_shorthand_flags(app, placement_flags, vram_total, /*with_ngl=*/false);
    add_override_kv_flag(app, override_kv);
    add_kv_type_flag(app, kv_type);
    add_kv_policy_flag(app, kv_policy);
    add_cpu_kernels_flag(app, cpu_kernels);
    add_defer_experts_flag(app, defer_experts);
    add_ubatch_flag(app, ubatch);
    kv_disk.add_to(app);
    app.add_flag("--stats,-v,--verbose", stats, "print load time and speed on stderr even when it is not a terminal");
    llama.add_to(app);
  }

  // Values a careful user would not mean: an Error(invalid_argument) naming the flag.
  void validate() const {
    const auto fail = [](const std::string& message) { throw Error(ErrorKind::invalid_argument, message); };
    if (max_new_tokens < -1) fail(fmt::format("-n/--max-tokens must be -1 (until EOS) or more, not {}", max_new_tokens));
    if (threads < 0) fail(fmt::format("-t/--threads must be 0 (one per physical core) or more, not {}", threads));
    if (context_tokens < 0 || context_tokens > (int64_t{1} << 24))
      fail(fmt::format("-c/--ctx must be within [1, {}] tokens (0 = the model's), not {}", int64_t{1} << 24,
                       context_tokens));
    if (!std::isfinite(temperature) || temperature < 0 || temperature > 100)
      fail(fmt::format("--temp must be within [0, 100] (0 = greedy), not {}", temperature));
    if (top_k < 0) fail(fmt::format("--top-k must be 0 (off) or more, not {}", top_k));
    if (!(top_p > 0 && top_p <= 1)) fail(fmt::format("--top-p must be within (0, 1], not {}", top_p));
    if (!(min_p >= 0 && min_p <= 1)) fail(fmt::format("--min-p must be within [0, 1], not {}", min_p));
    if (!(repeat_penalty > 0 && repeat_penalty <= 100))
      fail(fmt::format("--repeat-penalty must be within (0, 100] (1 = off), not {}", repeat_penalty));
    if (repeat_last_n < -1) fail(fmt::format("--repeat-last-n must be -1 (all) or more, not {}", repeat_last_n));
    if (!std::isfinite(frequency_penalty) || std::abs(frequency_penalty) > 100)
      fail(fmt::format("--frequency-penalty must be within [-100, 100], not {}", frequency_penalty));
    if (!std::isfinite(presence_penalty) || std::abs(presence_penalty) > 100)
      fail(fmt::format("--presence-penalty must be within [-100, 100], not {}", presence_penalty));
    llama.report(kv_type_name(resolved_kv_type()));
    (void)kv_policy_from_flag(kv_policy);
    (void)defer_experts_from_flag(defer_experts);
    (void)ubatch_from_flag(ubatch, context_tokens);
    LoadOptions checked;
    kv_disk.apply(checked);
  }

  // --kv-type when given; else llama.cpp's -ctk/-ctv when both name the same supported type; else
  // the default.
  KvType resolved_kv_type() const {
    if (!kv_type.empty()) return kv_type_from_flag(kv_type);
    if (const auto from_llama = llama.kv_type()) return parse_kv_type(*from_llama);
    return LoadOptions{}.kv_type;
  }

  SamplingParams sampling() const {
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = repeat_penalty;
    p.penalty_last_n = repeat_last_n;
    p.frequency_penalty = frequency_penalty;
    p.presence_penalty = presence_penalty;
    p.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}();
    return p;
  }

  LoadOptions load_options() const {
    LoadOptions o;
    o.threads = threads;
    o.max_context_tokens = context_tokens;
    o.max_sessions = 1;
    o.placement = placement;
    o.placement_flags = placement_flags;
    o.gpu_by_default = true;
    o.placement_flags.n_gpu_layers = llama.n_gpu_layers;
    o.placement_flags.vram_total_bytes = vram_total_from_flag(vram_total);
    o.kv_type = resolved_kv_type();
    o.kv_policy = kv_policy_from_flag(kv_policy);
    o.cpu_kernels = cpu_kernels_from_flag(cpu_kernels);
    o.defer_experts = defer_experts_from_flag(defer_experts);
    o.max_batch_tokens = ubatch_from_flag(ubatch, context_tokens);
    o.overrides = model_overrides_from(override_kv);
    kv_disk.apply(o);
    return o;
  }
};

}  // namespace tandem::cli
