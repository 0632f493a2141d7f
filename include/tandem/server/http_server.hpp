#pragma once
// `tandem serve`: an OpenAI-compatible HTTP server over one Engine, batching concurrent requests
// through the engine's Scheduler (Engine::scheduler(), the one C++ sessions and the C ABI use, so
// everything in the process shares one step loop; the server sets its limits). Endpoints
// (docs/SERVER.md): POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
// GET /metrics, and the chat page at /. Built on cpp-httplib; each
// connection is served by one of a fixed pool of threads that waits on its sequence's tokens.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tandem {
class Engine;
class ChatTemplate;
class Scheduler;
}  // namespace tandem

namespace tandem::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                          // 0: any free port (bind() says which)
  std::string api_key;                      // "" = no key needed
  std::string model_id = "tandem";          // what /v1/models lists and requests may name
  int64_t parallel = 4;                     // sequences decoding at once
  int64_t max_batch_tokens = 0;             // per scheduler step; 0 = the engine's
  int64_t max_queue = 64;                   // requests waiting past the running ones; more → 429
  size_t max_body_bytes = size_t{8} << 20;  // larger bodies → 413
  int64_t max_tokens_limit = 0;             // largest max_tokens a request may ask; 0 = the context
  int timeout_seconds = 600;                // a client that stalls reading or writing this long is dropped
  bool reasoning_inline = false;            // keep <think>…</think> in content instead of reasoning_content
  int http_threads = 0;                     // 0: parallel + max_queue + 8
};

class HttpServer {
 public:
  // `chat_template` may be null (then /v1/chat/completions answers 400). Throws Error for bad options.
  HttpServer(Engine& engine, const ChatTemplate* chat_template, ServerOptions options);
  ~HttpServer();  // cancels the server's sequences still in the scheduler and waits until they left
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; returns the port (the free one chosen when options.port is 0).
  // Throws Error(io) when the address cannot be bound.
  int bind();
  void run();   // serves until stop(); bind() first
  void stop();  // from any thread
  Scheduler& scheduler();  // the engine's

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::server
