// `tandem chat`: an interactive multi-turn chat through the model's chat template.
// Each turn renders the whole conversation; generate() then prefills only the tokens the session
// does not already hold. Ctrl-C stops a reply (twice at the prompt: exit); Ctrl-D exits with 0.
#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "cli/interrupt.hpp"
#include "cli/load_report.hpp"
#include "cli/model_text.hpp"
#include "cli/progress.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

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
      // Wait for input with SIGINT blocked except inside ppoll, which unblocks it atomically: a
      // Ctrl-C arriving between the flag's check and the wait would otherwise leave read() blocked
      // with the flag set (the hint never printed until the next key).
      sigset_t sigint, previous;
      sigemptyset(&sigint);
      sigaddset(&sigint, SIGINT);
      pthread_sigmask(SIG_BLOCK, &sigint, &previous);
      if (InterruptScope::interrupted()) {
        pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        buffer_.clear();
        return ReadStatus::interrupted;
      }
      pollfd input{STDIN_FILENO, POLLIN, 0};
      const int ready = ppoll(&input, 1, nullptr, &previous);
      pthread_sigmask(SIG_SETMASK, &previous, nullptr);
      if (ready < 0) {
        if (errno == EINTR && !InterruptScope::interrupted()) continue;
        if (errno == EINTR) {
          buffer_.clear();
          return ReadStatus::interrupted;
        }
        return ReadStatus::end_of_input;
      }
      char chunk[4096];
      const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) {
        if (!InterruptScope::interrupted()) continue;
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
  std::optional<std::string> chat_template;
  std::string chat_template_file;
};

// Renders the conversation; while it leaves less than `reply_room` tokens of the context for the
// reply, drops the oldest non-system turn (a user message and the replies after it) with a notice.
// Throws Error(out_of_range) when the newest message alone does not fit.
std::vector<int32_t> fit_prompt(nlohmann::json& messages, const Tokenizer& tokenizer, const ChatTemplate& tmpl,
                                int64_t context_tokens, int64_t reply_room) {
  for (;;) {
    ChatRequest request;
    request.messages = &messages;
    request.add_generation_prompt = true;
    request.cancel = &InterruptScope::flag();  // Ctrl-C stops a runaway template too
    auto prompt = tokenizer.encode(tmpl.render(request), /*add_special=*/false);
    if (static_cast<int64_t>(prompt.size()) + reply_room <= context_tokens) return prompt;
    size_t first = 0;
    while (first < messages.size() && messages[first].value("role", "") == "system") ++first;
    if (first + 1 >= messages.size())  // only the new message is left
      throw Error(ErrorKind::out_of_range,
                  fmt::format("the message takes {} tokens with the template; the context holds {} (-c/--ctx)",
                              prompt.size(), context_tokens));
    size_t end = first + 1;  // the oldest turn: its user message and what follows up to the next one
    while (end + 1 < messages.size() && messages[end].value("role", "") != "user") ++end;
    messages.erase(messages.begin() + static_cast<std::ptrdiff_t>(first),
                   messages.begin() + static_cast<std::ptrdiff_t>(end));
    fmt::print(stderr, "(context full: dropped the oldest turn)\n");
  }
}

int chat_command(const ChatFlags& flags) {
  flags.validate();
  const bool interactive = isatty(STDIN_FILENO) == 1;
  LoadOptions load = flags.load_options();
  ProgressBar progress;
  load.progress = progress.callback();
  const auto engine = Engine::load(flags.model_path, load);
  progress.finish();
  print_load_report(*engine);
  const int64_t context_tokens = engine->options().max_context_tokens;
  warn_past_trained_context(engine->config(), context_tokens, "-c/--ctx");
  const Tokenizer* tokenizer = &require_tokenizer(*engine, flags.model_path);
  std::unique_ptr<ChatTemplate> custom;
  if (flags.chat_template || !flags.chat_template_file.empty())
    custom = chat_template_from_flags(flags.chat_template, flags.chat_template_file, *tokenizer);
  const ChatTemplate* tmpl = custom ? custom.get() : &require_chat_template(*engine, flags.model_path);

  GenerateOptions options;
  options.sampling = flags.sampling();
  options.max_new_tokens = flags.max_new_tokens;
  options.stop_strings = flags.stops;
  options.skip_special_text = true;
  options.cancel = &InterruptScope::flag();
  if (!flags.ignore_eos) options.eos_ids = eos_ids_for(engine->config(), tokenizer);

  // Room a reply needs: all of -n when it is set, else a quarter of the context.
  const int64_t reply_room = std::min(context_tokens / 2,
                                      flags.max_new_tokens >= 0 ? flags.max_new_tokens + 1 : context_tokens / 4);
  nlohmann::json messages = nlohmann::json::array();
  if (!flags.system.empty()) messages.push_back({{"role", "system"}, {"content", flags.system}});
  const auto session = engine->new_session();
  InterruptScope interrupt_scope;
  LineReader reader;
  bool interrupted_at_prompt = false;
  if (interactive)
    fmt::print(stderr, "Chat with {} — Ctrl-C stops a reply, /clear forgets the conversation, Ctrl-D exits.\n", flags.model_path);

  for (;;) {
    InterruptScope::clear();  // before the prompt, so a Ctrl-C typed right after it counts
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

    if (line == "/clear") {
      messages = nlohmann::json::array();
      if (!flags.system.empty()) messages.push_back({{"role", "system"}, {"content", flags.system}});
      session->reset();
      fmt::print(stderr, "(conversation cleared)\n");
      continue;
    }

    messages.push_back({{"role", "user"}, {"content", line}});
    try {
      const auto prompt = fit_prompt(messages, *tokenizer, *tmpl, context_tokens, reply_room);
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
      if (result.stop == StopReason::context_full)
        fmt::print(stderr, "(the context of {} tokens is full: the reply was cut; the oldest turns will be "
                           "dropped next turn, or type /clear)\n", context_tokens);
      messages.push_back({{"role", "assistant"}, {"content", result.text}});
    } catch (const Error& e) {
      // The turn failed: forget it and keep the conversation usable.
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
       sub.add_option("--chat-template", flags->chat_template, "Jinja chat template text to use instead of the model's");
       sub.add_option("--chat-template-file", flags->chat_template_file, "read the chat template from a file");
       return [flags] { return chat_command(*flags); };
     }}};

}  // namespace
}  // namespace tandem::cli
