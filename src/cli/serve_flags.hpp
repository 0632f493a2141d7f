#pragma once
// Flags shared by `tandem serve` and `tandem bench serve`: the model and how it is loaded (the prefix
// cache is on unless --no-prefix-cache; --kv-disk adds its SSD tier), and the server's batching
// limits.
#include <cstdint>
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/generation_flags.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/server/http_server.hpp"

namespace tandem::cli {

struct ServeFlags {
  std::string model_path;
  int64_t parallel = 4;
  int64_t max_batch_tokens = 512;
  int64_t context_tokens = 0;
  int threads = 0;
  std::string placement, kv_type;
  PlacementFlags placement_flags;
  std::string vram_total;
  std::vector<std::string> override_kv;
  bool no_prefix_cache = false;
  KvDiskFlags kv_disk;

  void add_to(CLI::App& app) {
    app.add_option("-m,--model", model_path, "GGUF file or HF model folder")->required();
    app.add_option("--parallel", parallel,
                   "sequences decoded at once, each with a context of KV (llama.cpp: -np)")
        ->capture_default_str();
    app.add_option("--max-batch-tokens,-b,--batch-size,--ubatch,--ubatch-size", max_batch_tokens,
                   "tokens one scheduler step runs: every running sequence's decode token plus prompt chunks")
        ->capture_default_str();
    app.add_option("-c,--ctx,--ctx-size", context_tokens,
                   "context per sequence in tokens (0 = the model's trained context, at most 4096)")
        ->capture_default_str();
    app.add_option("-t,--threads", threads, "CPU threads, 0 = one per physical core")->capture_default_str();
    add_placement_flag(app, placement);
    add_placement_shorthand_flags(app, placement_flags, vram_total, /*with_ngl=*/true);
    add_kv_type_flag(app, kv_type);
    add_override_kv_flag(app, override_kv);
    app.add_flag("--no-prefix-cache", no_prefix_cache,
                 "do not keep prompts' KV blocks for later requests that start the same way (a repeated system "
                 "prompt, the turns of a chat); on by default");
    kv_disk.add_to(app);
  }

  void validate() const {
    const auto fail = [](const std::string& m) { throw Error(ErrorKind::invalid_argument, m); };
    if (parallel < 1 || parallel > 1024)
      fail(fmt::format("--parallel must be within [1, 1024], not {}", parallel));
    if (max_batch_tokens < 1 || max_batch_tokens > (1 << 20))
      fail(fmt::format("--max-batch-tokens must be within [1, {}], not {}", 1 << 20, max_batch_tokens));
    if (context_tokens < 0 || context_tokens > (int64_t{1} << 24))
      fail(fmt::format("-c/--ctx must be within [1, {}] tokens (0 = the model's), not {}", int64_t{1} << 24,
                       context_tokens));
    if (threads < 0)
      fail(fmt::format("-t/--threads must be 0 (one per physical core) or more, not {}", threads));
    if (no_prefix_cache && !kv_disk.dir.empty())
      fail("--kv-disk is the prefix cache's SSD tier: it cannot go with --no-prefix-cache");
    if (no_prefix_cache && !kv_disk.host_size.empty())
      fail("--kv-host-size is the prefix cache's host tier: it cannot go with --no-prefix-cache");
    LoadOptions checked;
    kv_disk.apply(checked);
  }

  LoadOptions load_options() const {
    LoadOptions o;
    o.threads = threads;
    o.max_context_tokens = context_tokens;
    o.max_sessions = parallel;  // the KV pool holds a full context for each running sequence
    o.max_batch_tokens = max_batch_tokens;
    o.placement = placement;
    o.placement_flags = placement_flags;
    o.gpu_by_default = true;
    o.placement_flags.vram_total_bytes = vram_total_from_flag(vram_total);
    o.kv_type = kv_type_from_flag(kv_type);
    o.overrides = model_overrides_from(override_kv);
    o.kv_prefix_cache = !no_prefix_cache;
    kv_disk.apply(o);
    return o;
  }

  // The id /v1/models lists: the file or folder name without .gguf (llama-server's default alias).
  std::string model_id() const {
    std::filesystem::path p(model_path);
    if (!p.has_filename()) p = p.parent_path();
    std::string name = p.filename().string();
    if (name.ends_with(".gguf")) name.resize(name.size() - 5);
    return name.empty() ? "tandem" : name;
  }
};

}  // namespace tandem::cli
