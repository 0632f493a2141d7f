// `tandem eval -m PATH --ids 1,2,3 --logits-out FILE`: one forward pass over the ids (no BOS
// added); writes float32 little-endian logits for every position, row-major [T, vocab].
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"

namespace tandem::cli {
namespace {

struct EvalFlags {
  std::string model_path;
  std::string ids;
  std::string logits_out;
  int threads = 0;
  std::string placement;
  std::vector<std::string> override_kv;
  std::string kv_type;  // --kv-type; "" = default
  std::string cpu_kernels;  // --cpu-kernels; "" = fast
  int64_t defer_experts = 0;  // --defer-experts; 0 = off
};

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string piece = text.substr(pos, comma - pos);
    while (!piece.empty() && piece.front() == ' ') piece.erase(piece.begin());
    while (!piece.empty() && piece.back() == ' ') piece.pop_back();
    int64_t value = 0;
    const auto [end, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), value);
    if (piece.empty() || ec != std::errc() || end != piece.data() + piece.size() || value < 0 ||
        value > INT32_MAX)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--ids: '{}' is not a token id (a non-negative integer)", piece));
    ids.push_back(static_cast<int32_t>(value));
    pos = comma + 1;
  }
  return ids;
}

int run_eval(const EvalFlags& flags) {
  const std::vector<int32_t> ids = parse_ids(flags.ids);
  LoadOptions options;
  options.threads = flags.threads;
  options.max_sessions = 1;
  options.load_tokenizer = false;
  options.placement = flags.placement;
  options.kv_type = kv_type_from_flag(flags.kv_type);
  options.cpu_kernels = cpu_kernels_from_flag(flags.cpu_kernels);
  options.defer_experts = defer_experts_from_flag(flags.defer_experts);
  options.overrides = model_overrides_from(flags.override_kv);
  // Scratch and KV sized for exactly this pass: eval's peak memory is the mapped weights plus little.
  options.max_context_tokens = std::max<int64_t>(static_cast<int64_t>(ids.size()), 1);
  options.max_batch_tokens = std::min<int64_t>(options.max_context_tokens, 512);
  // A progress line on a terminal only; logs and pipes stay quiet.
  if (isatty(STDERR_FILENO)) {
    options.progress = [](float fraction, std::string_view stage) {
      const int filled = static_cast<int>(fraction * 30);
      fmt::print(stderr, "\rloading [{:<30}] {:3d}% {:<24}", std::string(static_cast<size_t>(filled), '#'),
                 static_cast<int>(fraction * 100), stage);
      if (fraction >= 1.0f) fmt::print(stderr, "\n");
    };
  }
  const auto engine = Engine::load(flags.model_path, options);
  for (const auto& warning : engine->warnings()) fmt::print(stderr, "tandem: warning: {}\n", warning);
  warn_past_trained_context(engine->config(), static_cast<int64_t>(ids.size()), "--ids");
  const int64_t vocab = engine->config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= vocab)
      throw Error(
          ErrorKind::invalid_argument,
          fmt::format("--ids: token id {} at index {} is outside the vocabulary [0, {})", ids[i], i, vocab));
  const auto session = engine->new_session();
  session->prefill(ids, /*all_logits=*/true);
  const auto logits = session->all_logits();
  static_assert(std::endian::native == std::endian::little, "logits are written as little-endian float32");
  std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(flags.logits_out.c_str(), "wb"), &std::fclose);
  if (!out) throw Error(ErrorKind::io, fmt::format("cannot open '{}' for writing", flags.logits_out));
  if (std::fwrite(logits.data(), sizeof(float), logits.size(), out.get()) != logits.size() ||
      std::fflush(out.get()) != 0)
    throw Error(ErrorKind::io, fmt::format("cannot write logits to '{}'", flags.logits_out));
  return 0;
}

const RegisterCommand registration{CommandSpec{
    "eval", "one forward pass over token ids; writes float32 logits [T, vocab]",
    [](CLI::App& sub) -> CommandRun {
      auto flags = std::make_shared<EvalFlags>();
      sub.add_option("-m,--model", flags->model_path, "GGUF file or HF folder")->required();
      sub.add_option("--ids", flags->ids, "comma-separated token ids (no BOS is added)")->required();
      sub.add_option("--logits-out", flags->logits_out, "file for float32 logits [T, vocab]")->required();
      sub.add_option("-t,--threads", flags->threads, "worker threads (0 = one per physical core)");
      add_placement_flag(sub, flags->placement, /*gpu_by_default=*/false);
      add_override_kv_flag(sub, flags->override_kv);
      add_kv_type_flag(sub, flags->kv_type);
      add_cpu_kernels_flag(sub, flags->cpu_kernels);
      add_defer_experts_flag(sub, flags->defer_experts);
      return [flags] { return run_eval(*flags); };
    }}};

}  // namespace
}  // namespace tandem::cli
