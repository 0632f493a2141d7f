// `tandem run`: one prompt in, a continuation out.
//   tandem run -m PATH --ids 1,2,3 -n 24 --temp 0 --print-ids   → the new ids on one line
//   tandem run -m PATH -p "text" [--chat] [sampling flags]        → the text, streamed
// With --ids, generation stops only at the model's own EOS ids (config / generation_config / GGUF)
// as HF generate does; with -p, the tokenizer's EOS token stops it too.
#include <fmt/core.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <memory>
#include <optional>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "cli/interrupt.hpp"
#include "cli/load_report.hpp"
#include "cli/model_text.hpp"
#include "cli/progress.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string_view item(text.data() + start, end - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int32_t id = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || id < 0)
      throw Error(ErrorKind::invalid_argument, fmt::format("--ids: '{}' is not a token id", item));
    ids.push_back(id);
    start = end + 1;
  }
  return ids;
}

struct RunFlags : GenerationFlags {
  RunFlags() : GenerationFlags(128) {}
  std::string ids;
  std::optional<std::string> prompt;
  std::string prompt_file;
  std::optional<std::string> chat_template;
  std::string chat_template_file;
  bool chat = false;
  bool print_ids = false;
};

int run_command(const RunFlags& flags) {
  flags.validate();
  const bool ids_mode = !flags.ids.empty();
  const int text_sources = (flags.prompt ? 1 : 0) + (flags.prompt_file.empty() ? 0 : 1);
  if (text_sources > 1) throw Error(ErrorKind::invalid_argument, "run: give -p/--prompt or -f/--file, not both");
  if (ids_mode == (text_sources == 1))
    throw Error(ErrorKind::invalid_argument, "run: give exactly one of --ids, -p/--prompt and -f/--file");
  if (flags.chat && ids_mode) throw Error(ErrorKind::invalid_argument, "run: --chat needs -p/--prompt or -f/--file");
  if ((flags.chat_template || !flags.chat_template_file.empty()) && !flags.chat)
    throw Error(ErrorKind::invalid_argument, "run: --chat-template applies with --chat");
  const std::string prompt_text =
      flags.prompt ? *flags.prompt : (flags.prompt_file.empty() ? std::string() : read_file_bytes(flags.prompt_file));

  const auto load_start = std::chrono::steady_clock::now();
  LoadOptions load = flags.load_options();
  load.load_tokenizer = !(ids_mode && flags.print_ids && flags.stops.empty());
  ProgressBar progress;
  load.progress = progress.callback();
  const auto engine = Engine::load(flags.model_path, load);
  progress.finish();
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  print_load_report(*engine);
  const Tokenizer* tokenizer = load.load_tokenizer ? engine->tokenizer() : nullptr;
  const int64_t vocab = engine->config().vocab_size;

  std::vector<int32_t> prompt;
  if (ids_mode) {
    prompt = parse_ids(flags.ids);
    for (int32_t id : prompt)
      if (id >= vocab)
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("--ids: token id {} is outside the vocabulary (size {})", id, vocab));
  } else {
    tokenizer = &require_tokenizer(*engine, flags.model_path);
    if (flags.chat) {
      std::unique_ptr<ChatTemplate> custom;
      if (flags.chat_template || !flags.chat_template_file.empty())
        custom = chat_template_from_flags(flags.chat_template, flags.chat_template_file, *tokenizer);
      const ChatTemplate& tmpl = custom ? *custom : require_chat_template(*engine, flags.model_path);
      const nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", prompt_text}}});
      ChatRequest request;
      request.messages = &messages;
      request.add_generation_prompt = true;
      prompt = tokenizer->encode(tmpl.render(request), /*add_special=*/false);
    } else {
      prompt = tokenizer->encode(prompt_text, /*add_special=*/true);
      if (prompt.empty())
        throw Error(ErrorKind::invalid_argument,
                    "run: the prompt is empty and the model adds no BOS token, so there is nothing to continue");
    }
  }
  if (static_cast<int64_t>(prompt.size()) > engine->config().max_position_embeddings)
    warn_past_trained_context(engine->config(), static_cast<int64_t>(prompt.size()), "the prompt");
  else
    warn_past_trained_context(engine->config(), engine->options().max_context_tokens, "-c/--ctx");

  GenerateOptions options;
  options.sampling = flags.sampling();
  options.max_new_tokens = flags.max_new_tokens;
  options.stop_strings = flags.stops;
  if (!flags.ignore_eos) options.eos_ids = eos_ids_for(engine->config(), ids_mode ? nullptr : tokenizer);

  const bool stream_text = !flags.print_ids && tokenizer;
  InterruptScope interrupt_scope;
  options.cancel = &InterruptScope::flag();
  const auto session = engine->new_session();
  const auto result = generate(*session, tokenizer, prompt, options, [&](int32_t, std::string_view text) {
    if (stream_text && !text.empty()) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });

  if (!stream_text) {
    std::string line;
    for (size_t i = 0; i < result.ids.size(); ++i) line += (i ? " " : "") + std::to_string(result.ids[i]);
    fmt::print("{}\n", line);
  } else if (isatty(STDOUT_FILENO)) {
    fmt::print("\n");
  }
  std::fflush(stdout);
  if (flags.stats || isatty(STDERR_FILENO))
    fmt::print(stderr, "[load {:.2f} s; prompt {} tokens, {:.1f} tok/s; generated {} tokens, {}; stop: {}]\n",
               load_seconds, result.stats.prompt_tokens, result.stats.prefill_tokens_per_second(),
               result.stats.generated_tokens,
               result.stats.decoded_tokens > 0 ? fmt::format("{:.1f} tok/s", result.stats.decode_tokens_per_second())
                                               : std::string("no decode step"),
               stop_reason_name(result.stop));
  if (flags.stats || isatty(STDERR_FILENO))
    if (const auto disk = engine->kv_disk_stats())
      fmt::print(stderr, "[prompt tokens from the prefix cache: {}] {}\n", result.stats.cached_prompt_tokens,
                 kv_disk_summary(*disk));
  if (flags.stats || isatty(STDERR_FILENO))
    if (const auto host = engine->kv_host_stats()) fmt::print(stderr, "{}\n", kv_host_summary(*host));
  if (result.stop == StopReason::cancelled) return 130;  // as a shell reports SIGINT
  return 0;
}

const RegisterCommand registered{
    {"run", "generate a continuation of a prompt (text or token ids)", [](CLI::App& sub) -> CommandRun {
       auto flags = std::make_shared<RunFlags>();
       flags->add_to(sub);
       sub.add_option("--ids", flags->ids, "prompt as token ids: 1,2,3 (no BOS added)");
       sub.add_option("-p,--prompt", flags->prompt, "prompt text");
       sub.add_option("-f,--file", flags->prompt_file, "read the prompt text from a file");
       sub.add_option("--chat-template", flags->chat_template, "with --chat: Jinja chat template text to use instead of the model's");
       sub.add_option("--chat-template-file", flags->chat_template_file, "with --chat: read the chat template from a file");
       sub.add_flag("--chat", flags->chat, "wrap the prompt as a user message in the chat template");
       sub.add_flag("--print-ids", flags->print_ids, "print the new token ids on one line instead of text");
       return [flags] { return run_command(*flags); };
     }}};

}  // namespace
}  // namespace tandem::cli
