// `tandem serve`: the OpenAI-compatible HTTP server (src/server) over one loaded model. Ctrl-C or
// SIGTERM stops it: running requests are cancelled and the listening socket closed.
#include <fmt/core.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include "cli/command.hpp"
#include "cli/interrupt.hpp"
#include "cli/load_report.hpp"
#include "cli/model_text.hpp"
#include "cli/progress.hpp"
#include "cli/serve_flags.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/server/http_server.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

struct ServeCommandFlags : ServeFlags {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string alias;
  int64_t max_queue = 64;
  int64_t max_body_mb = 8;
  int timeout = 600;
  std::string reasoning_format = "deepseek";
  std::optional<std::string> chat_template;
  std::string chat_template_file;
};

std::atomic<bool> g_terminate{false};  // SIGTERM: a process has one disposition per signal
extern "C" void on_sigterm(int) { g_terminate.store(true); }

int serve_command(const ServeCommandFlags& flags) {
  flags.validate();
  if (flags.port < 0 || flags.port > 65535)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--port must be within [0, 65535], not {}", flags.port));
  if (flags.max_queue < 0 || flags.max_queue > 100000)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--queue must be within [0, 100000], not {}", flags.max_queue));
  if (flags.max_body_mb < 1 || flags.max_body_mb > 1024)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--max-body must be within [1, 1024] MB, not {}", flags.max_body_mb));
  if (flags.reasoning_format != "deepseek" && flags.reasoning_format != "none")
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--reasoning-format must be deepseek or none, not '{}'", flags.reasoning_format));
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not the end of the server

  LoadOptions load = flags.load_options();
  ProgressBar progress;
  load.progress = progress.callback();
  const auto engine = Engine::load(flags.model_path, load);
  progress.finish();
  print_load_report(*engine);
  const Tokenizer& tokenizer = require_tokenizer(*engine, flags.model_path);
  std::unique_ptr<ChatTemplate> custom;
  if (flags.chat_template || !flags.chat_template_file.empty())
    custom = chat_template_from_flags(flags.chat_template, flags.chat_template_file, tokenizer);
  const ChatTemplate* tmpl = custom ? custom.get() : engine->chat_template();
  if (!tmpl)
    fmt::print(stderr, "tandem: warning: the model has no chat template: /v1/chat/completions answers 400\n");

  server::ServerOptions options;
  options.host = flags.host;
  options.port = flags.port;
  options.api_key = flags.api_key;
  options.model_id = flags.alias.empty() ? flags.model_id() : flags.alias;
  options.parallel = flags.parallel;
  options.max_batch_tokens = flags.max_batch_tokens;
  options.max_queue = flags.max_queue;
  options.max_body_bytes = static_cast<size_t>(flags.max_body_mb) << 20;
  options.timeout_seconds = flags.timeout;
  options.reasoning_inline = flags.reasoning_format == "none";
  server::HttpServer http(*engine, tmpl, options);
  const int port = http.bind();

  InterruptScope interrupt;
  struct sigaction term = {};
  term.sa_handler = on_sigterm;
  sigemptyset(&term.sa_mask);
  sigaction(SIGTERM, &term, nullptr);
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done.load() && !InterruptScope::interrupted() && !g_terminate.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    http.stop();
  });
  fmt::print(stderr, "model {} (context {} tokens, {} parallel, batch {} tokens, prefix cache {})\n",
             options.model_id, engine->options().max_context_tokens, flags.parallel, flags.max_batch_tokens,
             !engine->options().kv_prefix_cache       ? "off"
             : engine->options().kv_disk_dir.empty() ? "on"
                                                     : "on, SSD tier in " + engine->options().kv_disk_dir);
  if (const auto host = engine->kv_host_stats())
    fmt::print(stderr, "prefix cache host tier: {} blocks, {:.1f} MiB pinned\n", host->capacity_blocks,
               static_cast<double>(host->capacity_bytes) / (1 << 20));
  fmt::print(stderr, "listening on http://{}:{}\n", flags.host, port);
  std::fflush(stderr);
  http.run();
  done.store(true);
  watcher.join();
  fmt::print(stderr, "stopped\n");
  return 0;
}

const RegisterCommand registered{
    {"serve", "OpenAI-compatible HTTP server with continuous batching and a chat page (docs/SERVER.md)",
     [](CLI::App& sub) -> CommandRun {
       auto flags = std::make_shared<ServeCommandFlags>();
       flags->add_to(sub);
       sub.add_option("--host", flags->host, "address to listen on (loopback by default)")
           ->capture_default_str();
       sub.add_option("--port", flags->port, "port to listen on; 0 = any free port")->capture_default_str();
       sub.add_option("--api-key", flags->api_key, "require 'Authorization: Bearer KEY' on the API");
       sub.add_option("-a,--alias", flags->alias, "model id /v1/models lists (default: the file name)");
       sub.add_option("--queue", flags->max_queue, "requests that may wait for a slot; more get 429")
           ->capture_default_str();
       sub.add_option("--max-body", flags->max_body_mb, "largest request body in MB; larger gets 413")
           ->capture_default_str();
       sub.add_option("--timeout", flags->timeout, "seconds a stalled client may take to read or write")
           ->capture_default_str();
       sub.add_option("--chat-template", flags->chat_template, "Jinja chat template text to use instead of the model's");
       sub.add_option("--chat-template-file", flags->chat_template_file, "read the chat template from a file");
       sub.add_option("--reasoning-format", flags->reasoning_format,
                      "deepseek: <think> text goes to reasoning_content; none: keep it inline in content")
           ->capture_default_str();
       return [flags] { return serve_command(*flags); };
     }}};

}  // namespace
}  // namespace tandem::cli
