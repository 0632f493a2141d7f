// `tandem perplexity -m MODEL -f TEXT [--ctx 512] [--batch N] [--chunks N] [--kv-type T]
// [--kv-policy P] [--kv-compare] [--json]`: perplexity of a text file as llama.cpp's perplexity
// tool measures it (tandem/engine/perplexity.hpp): the text tokenized whole without BOS,
// non-overlapping --ctx windows, each scoring its second half. Prints a running estimate
// ([1]6.1234,[2]…) and `Final estimate: PPL = X +/- E`; with --json, stdout is one object
// {"ppl", "windows", "tokens", "scored", "seconds", "ppl_error", "kv_type", "kv_policy",
// "kv_bytes_per_token", "defer_experts"} (plus "ppl_exact" and "kl_mean" with --kv-compare; the
// exact run also defers --defer-experts) and the running
// estimate goes to stderr. The KV setting applies inside each window; a retention policy runs
// the window in chunks of --batch tokens (default 32), cutting the cache back after each.
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "cli/model_text.hpp"
#include "cli/progress.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/perplexity.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

struct PerplexityFlags {
  std::string model_path;
  std::string text_path;
  int64_t ctx = 512;
  int64_t batch = 0;
  int64_t chunks = -1;
  bool json = false;
  int threads = 0;
  std::string placement;
  std::vector<std::string> override_kv;
  std::string kv_type;  // --kv-type; "" = default
  std::string kv_policy;  // --kv-policy; "" = full
  bool kv_compare = false;
  std::string cpu_kernels;  // --cpu-kernels; "" = fast
  int64_t defer_experts = 0;  // --defer-experts; 0 = off
};

int run_perplexity(const PerplexityFlags& flags) {
  if (flags.ctx < 4 || flags.ctx % 2 != 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--ctx must be an even number of at least 4 tokens, not {}", flags.ctx));
  if (flags.batch < 0) throw Error(ErrorKind::invalid_argument, fmt::format("--batch must be positive, not {}", flags.batch));
  const std::string text = read_file_bytes(flags.text_path);
  if (text.empty()) throw Error(ErrorKind::invalid_argument, fmt::format("{}: the text file is empty", flags.text_path));

  const ModelOverrides overrides = model_overrides_from(flags.override_kv);
  const KvType kv_type = kv_type_from_flag(flags.kv_type);
  const std::string kv_policy = kv_policy_from_flag(flags.kv_policy);
  const bool bounded = !kv_policy.empty() && kv_policy != "full";
  // The trained context is checked before loading: the KV cache is sized for --ctx.
  const int64_t trained = open_model_files(flags.model_path, overrides).config.max_position_embeddings;
  if (trained > 0 && flags.ctx > trained)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--ctx {} is beyond the model's trained context of {} tokens", flags.ctx, trained));

  LoadOptions load;
  load.threads = flags.threads;
  load.max_sessions = 1;
  load.max_context_tokens = flags.ctx;
  load.max_batch_tokens = flags.batch > 0 ? std::min(flags.batch, flags.ctx)
                                          : std::min<int64_t>(flags.ctx, bounded ? 32 : 512);
  load.placement = flags.placement;
  load.gpu_by_default = true;
  load.kv_type = kv_type;
  load.kv_policy = kv_policy;
  load.cpu_kernels = cpu_kernels_from_flag(flags.cpu_kernels);
  load.defer_experts = defer_experts_from_flag(flags.defer_experts);
  load.overrides = overrides;
  ProgressBar progress_bar;
  load.progress = progress_bar.callback();
  const auto engine = Engine::load(flags.model_path, load);
  progress_bar.finish();
  for (const auto& warning : engine->warnings())
    if (!warning.starts_with("no tokenizer: ") && !warning.starts_with("no chat template: "))
      fmt::print(stderr, "tandem: warning: {}\n", warning);
  const int64_t stream_from = engine->stream_experts_min_tokens();
  if (load.defer_experts > 0 && stream_from > 0 && std::min(flags.ctx, engine->options().max_batch_tokens) >= stream_from)
    fmt::print(stderr,
               "tandem: warning: passes of {}+ tokens stream the experts to the GPU and defer none, so these windows "
               "measure no deferral; --batch {} measures it\n",
               stream_from, stream_from - 1);

  // --kv-compare: the exact cache (f32, every token) on a second engine over the same mapping.
  std::unique_ptr<Engine> exact;
  if (flags.kv_compare) {
    LoadOptions exact_load = load;
    exact_load.kv_type = KvType::f32;
    exact_load.kv_policy.clear();
    exact_load.max_batch_tokens = std::min<int64_t>(flags.ctx, 512);
    exact_load.load_tokenizer = false;
    exact_load.progress = nullptr;
    exact = Engine::load(flags.model_path, exact_load);
  }
  uint64_t kv_bytes = 0;
  for (const auto& line : engine->memory_report().lines)
    if (line.what == "KV pool" || line.what == "KV cache") kv_bytes += line.bytes;  // host planes, GPU layers
  const int64_t block_tokens = load.kv_block_tokens;
  const double kv_bytes_per_token =
      static_cast<double>(kv_bytes) / static_cast<double>((flags.ctx + block_tokens - 1) / block_tokens * block_tokens);

  const Tokenizer* tokenizer = &require_tokenizer(*engine, flags.model_path);
  std::vector<int32_t> tokens;
  try {
    tokens = tokenizer->encode(text, /*add_special=*/false);
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{}: {}", flags.text_path, e.what()));
  }
  if (static_cast<int64_t>(tokens.size()) < flags.ctx)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}: {} tokens is less than one window of --ctx {} tokens", flags.text_path,
                            tokens.size(), flags.ctx));

  std::FILE* running = flags.json ? stderr : stdout;
  const int64_t windows = static_cast<int64_t>(tokens.size()) / flags.ctx;
  fmt::print(stderr, "perplexity: {} tokens, {} windows of {} tokens, {} scored per window, defer-experts {}\n",
             tokens.size(), flags.chunks >= 0 ? std::min(windows, flags.chunks) : windows, flags.ctx,
             flags.ctx / 2 - 1, load.defer_experts);
  PerplexityOptions options;
  options.ctx = flags.ctx;
  options.max_windows = flags.chunks;
  options.exact = exact.get();
  const PerplexityResult result =
      evaluate_perplexity(*engine, tokens, options, [&](const PerplexityResult& so_far) {
        fmt::print(running, "[{}]{:.4f},", so_far.windows, so_far.ppl);
        std::fflush(running);
      });
  fmt::print(running, "\n");
  if (flags.json) {
    const nlohmann::json out = {{"ppl", result.ppl},         {"windows", result.windows},
                                {"tokens", result.tokens},   {"scored", result.scored},
                                {"seconds", result.seconds}, {"ppl_error", result.ppl_error},
                                {"kv_type", kv_type_name(kv_type)}, {"kv_policy", bounded ? kv_policy : "full"},
                                {"kv_bytes_per_token", kv_bytes_per_token}, {"defer_experts", load.defer_experts}};
    nlohmann::json with_compare = out;
    if (exact) {
      with_compare["ppl_exact"] = result.ppl_exact;
      with_compare["kl_mean"] = result.kl_mean;
    }
    fmt::print("{}\n", with_compare.dump());
  } else {
    fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", result.ppl, result.ppl_error);
    if (load.defer_experts > 0)
      fmt::print("Expert deferral: {} routed expert(s) per token added one layer later\n", load.defer_experts);
    if (exact)
      fmt::print("Exact cache (f32, full): PPL = {:.4f}, change {:+.3f} %, mean KL = {:.6f}\n", result.ppl_exact,
                 100.0 * (result.ppl / result.ppl_exact - 1.0), result.kl_mean);
    fmt::print(stderr, "[{} windows, {} scored tokens, {:.2f} s, {:.1f} tok/s]\n", result.windows, result.scored,
               result.seconds, result.seconds > 0 ? static_cast<double>(result.windows * flags.ctx) / result.seconds : 0.0);
  }
  return 0;
}

const RegisterCommand registered{CommandSpec{
    "perplexity", "perplexity of a text file (llama.cpp's windows: --ctx tokens, second half scored)",
    [](CLI::App& sub) -> CommandRun {
      auto flags = std::make_shared<PerplexityFlags>();
      sub.add_option("-m,--model", flags->model_path, "GGUF file or HF folder")->required();
      sub.add_option("-f,--file", flags->text_path, "UTF-8 text file to score")->required();
      sub.add_option("-c,--ctx", flags->ctx, "window length in tokens (even)")->capture_default_str();
      sub.add_option("-b,--batch", flags->batch, "tokens per forward pass (default min(ctx, 512))");
      sub.add_option("--chunks", flags->chunks, "score only the first N windows (default all)");
      sub.add_flag("--json", flags->json, "print one JSON object {ppl, windows, tokens, scored, seconds}");
      sub.add_option("-t,--threads", flags->threads, "worker threads (0 = one per physical core)");
      add_placement_flag(sub, flags->placement);
      add_override_kv_flag(sub, flags->override_kv);
      add_kv_type_flag(sub, flags->kv_type);
      add_kv_policy_flag(sub, flags->kv_policy);
      sub.add_flag("--kv-compare", flags->kv_compare,
                   "also run the exact cache (f32, full) and report kl_mean, the mean KL divergence of "
                   "next-token distributions (exact ‖ this setting)");
      add_cpu_kernels_flag(sub, flags->cpu_kernels);
      add_defer_experts_flag(sub, flags->defer_experts);
      return [flags] { return run_perplexity(*flags); };
    }}};

}  // namespace
}  // namespace tandem::cli
