// `tandem chat`: an interactive multi-turn chat through the model's chat template.
// Each turn renders the whole conversation; generate() then prefills only the tokens the session
// does not already hold. Ctrl-C stops a reply (twice at the prompt: exit); Ctrl-D exits with 0.
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "cli/progress.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

// Written by the SIGINT handler: lock-free atomics are async-signal-safe.
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_sigint(int) { g_interrupted.store(true); }

// Installs on_sigint without SA_RESTART, so a blocking read() at the prompt returns EINTR.
class SigintScope {
 public:
  SigintScope() {
    struct sigaction action = {};
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_);
  }
  ~SigintScope() { sigaction(SIGINT, &previous_, nullptr); }

 private:
  struct sigaction previous_ = {};
};

enum class ReadStatus { line, end_of_input, interrupted };

// Reads stdin with read(2) so an interrupt is seen at once rather than retried by stdio.
class LineReader {
 public:
  ReadStatus read_line(std::string& line) {
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return ReadStatus::line;
      }
      if (g_interrupted.load()) {  // Ctrl-C arrived before we blocked in read()
        buffer_.clear();
        return ReadStatus::interrupted;
      }
      char chunk[4096];
      const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) {
        if (!g_interrupted.load()) continue;
        buffer_.clear();
        return ReadStatus::interrupted;
      }
      if (!buffer_.empty()) {  // last line without a newline
        line = std::move(buffer_);
        buffer_.clear();
        return ReadStatus::line;
      }
      return ReadStatus::end_of_input;
    }
  }

 private:
  std::string buffer_;
};

struct ChatFlags : GenerationFlags {
  ChatFlags() : GenerationFlags(1024) {}
  std::string system;
};

int chat_command(const ChatFlags& flags) {
  const bool interactive = isatty(STDIN_FILENO) == 1;
  LoadOptions load = flags.load_options();
  ProgressBar progress;
  load.progress = progress.callback();
  const auto engine = Engine::load(flags.model_path, load);
  progress.finish();
  const Tokenizer* tokenizer = engine->tokenizer();
  const ChatTemplate* tmpl = engine->chat_template();
  if (!tokenizer)
    throw Error(ErrorKind::unsupported, fmt::format("{}: the model ships no tokenizer", flags.model_path));
  if (!tmpl)
    throw Error(ErrorKind::unsupported,
                fmt::format("{}: the model ships no chat template", flags.model_path));

  GenerateOptions options;
  options.sampling = flags.sampling();
  options.max_new_tokens = flags.max_new_tokens;
  options.stop_strings = flags.stops;
  options.skip_special_text = true;
  options.cancel = &g_interrupted;
  if (!flags.ignore_eos) options.eos_ids = eos_ids_for(engine->config(), tokenizer);

  nlohmann::json messages = nlohmann::json::array();
  if (!flags.system.empty()) messages.push_back({{"role", "system"}, {"content", flags.system}});
  const auto session = engine->new_session();
  SigintScope sigint;
  LineReader reader;
  bool interrupted_at_prompt = false;
  if (interactive)
    fmt::print(stderr, "Chat with {} — Ctrl-C stops a reply, Ctrl-D exits.\n", flags.model_path);

  for (;;) {
    g_interrupted.store(false);  // before the prompt, so a Ctrl-C typed right after it counts
    if (interactive) {
      fmt::print("> ");
      std::fflush(stdout);
    }
    std::string line;
    const ReadStatus status = reader.read_line(line);
    if (status == ReadStatus::end_of_input) {
      if (interactive) fmt::print("\n");
      return 0;
    }
    if (status == ReadStatus::interrupted) {
      if (interrupted_at_prompt) {
        fmt::print("\n");
        return 0;
      }
      interrupted_at_prompt = true;
      fmt::print(stderr, "\n(Ctrl-C again to exit, Ctrl-D to quit)\n");
      continue;
    }
    interrupted_at_prompt = false;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;

    messages.push_back({{"role", "user"}, {"content", line}});
    try {
      ChatRequest request;
      request.messages = &messages;
      request.add_generation_prompt = true;
      const auto prompt = tokenizer->encode(tmpl->render(request), /*add_special=*/false);
      const auto result = generate(*session, tokenizer, prompt, options, [](int32_t, std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      fmt::print("\n");
      std::fflush(stdout);
      fmt::print(stderr, "[{} tokens, {:.1f} tok/s{}]\n", result.stats.generated_tokens,
                 result.stats.decode_tokens_per_second(),
                 result.stop == StopReason::cancelled ? ", interrupted" : "");
      messages.push_back({{"role", "assistant"}, {"content", result.text}});
    } catch (const Error& e) {
      // The turn failed (context full, ...): forget it and keep the conversation usable.
      fmt::print(stderr, "\ntandem: error: {}\n", e.what());
      messages.erase(messages.size() - 1);
      session->reset();
    }
  }
}

const RegisterCommand registered{
    {"chat", "interactive multi-turn chat using the model's chat template", [](CLI::App& sub) -> CommandRun {
       auto flags = std::make_shared<ChatFlags>();
       flags->add_to(sub);
       sub.add_option("--system", flags->system, "system prompt");
       return [flags] { return chat_command(*flags); };
     }}};

}  // namespace
}  // namespace tandem::cli
