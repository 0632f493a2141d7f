#include "tandem/server/http_server.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <unordered_set>

#include "server/chat_page.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/server/api_error.hpp"
#include "tandem/server/completion_request.hpp"
#include "tandem/server/metrics.hpp"
#include "tandem/server/reply_parser.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::server {

namespace {

using ojson = nlohmann::ordered_json;

// What the scheduler's thread hands to the connection's thread.
struct Channel {
  std::mutex mutex;
  std::condition_variable changed;
  std::string text;  // streamed, not yet taken
  bool finished = false;
  SequenceResult result;
};

// The server's sequences still in the engine's scheduler, so that a server going away cancels them
// and waits until they have left (their callbacks hold only shared state, but their KV blocks and
// the metrics should be settled when the server is gone).
class LiveSequences {
 public:
  void add(uint64_t id) {
    std::lock_guard lock(mutex_);
    ids_.insert(id);
  }
  void remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    ids_.erase(id);
    changed_.notify_all();
  }
  void cancel_all_and_wait(Scheduler& scheduler) {
    std::unique_lock lock(mutex_);
    for (uint64_t id : ids_) scheduler.cancel(id);
    changed_.wait(lock, [&] { return ids_.empty(); });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::unordered_set<uint64_t> ids_;
};

const char* finish_reason(const SequenceResult& r, bool tool_calls) {
  if (tool_calls) return "tool_calls";
  switch (r.stop) {
    case StopReason::max_tokens:
    case StopReason::context_full:
      return "length";
    default:
      return "stop";
  }
}

void send_json(httplib::Response& res, int status, const ojson& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(e.body().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

int64_t unix_time() { return static_cast<int64_t>(std::time(nullptr)); }

// httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed when Debian built the
// library): a burst of new connections past it has SYNs dropped and retried a second later. Linux
// takes a second listen() on a listening socket as a new backlog.
class ListeningServer : public httplib::Server {
 public:
  void widen_backlog(int backlog) { ::listen(svr_sock_, backlog); }
};

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  const Tokenizer* tokenizer;
  const ChatTemplate* chat_template;
  ServerOptions options;
  ToolCallSyntax tool_syntax = ToolCallSyntax::none;
  std::vector<int32_t> eos_ids;
  Scheduler* scheduler = nullptr;  // the engine's: C++ sessions and the C ABI share its steps
  std::shared_ptr<LiveSequences> live = std::make_shared<LiveSequences>();
  ListeningServer http;
  int64_t created = unix_time();
  std::mutex counters_mutex;
  HttpCounters counters;
  std::atomic<uint64_t> next_request{1};
  std::atomic<bool> stopping{false};

  Impl(Engine& e, const ChatTemplate* t, ServerOptions o)
      : engine(e), tokenizer(e.tokenizer()), chat_template(t), options(std::move(o)) {
    if (!tokenizer) throw Error(ErrorKind::unsupported, "serve: the model has no tokenizer");
    if (options.parallel <= 0) throw Error(ErrorKind::invalid_argument, "--parallel must be at least 1");
    if (options.max_queue < 0)
      throw Error(ErrorKind::invalid_argument, "the queue limit must not be negative");
    if (options.timeout_seconds <= 0)
      throw Error(ErrorKind::invalid_argument, "--timeout must be at least 1 second");
    tool_syntax = detect_tool_call_syntax(*tokenizer);
    eos_ids = eos_ids_for(engine.config(), tokenizer);
    scheduler = &engine.scheduler();
    scheduler->set_options(SchedulerOptions{options.parallel, options.max_batch_tokens, options.max_queue});
    setup_routes();
  }
  ~Impl() { live->cancel_all_and_wait(*scheduler); }

  int64_t context() const { return scheduler->max_context_tokens(); }

  void count(int status) {
    std::lock_guard lock(counters_mutex);
    ++counters.responses_by_status[status];
  }

  bool authorised(const httplib::Request& req) const {
    if (options.api_key.empty()) return true;
    const std::string auth = req.get_header_value("Authorization");
    return auth == "Bearer " + options.api_key;
  }

  void setup_routes() {
    const int threads =
        options.http_threads > 0
            ? options.http_threads
            : static_cast<int>(std::min<int64_t>(options.parallel + options.max_queue + 8, 1024));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_payload_max_length(options.max_body_bytes);
    http.set_read_timeout(options.timeout_seconds);
    http.set_write_timeout(options.timeout_seconds);
    http.set_keep_alive_timeout(5);
    http.set_default_headers({{"Access-Control-Allow-Origin", "*"}, {"Server", "tandem"}});
    http.set_logger([this](const httplib::Request&, const httplib::Response& res) { count(res.status); });
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/" || req.path == "/health" || req.path == "/v1/health" || req.method == "OPTIONS")
        return httplib::Server::HandlerResponse::Unhandled;
      if (authorised(req)) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, ApiError(401, "Invalid or missing API key: send 'Authorization: Bearer KEY'",
                               "authentication_error", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string message = fmt::format("HTTP status {}", res.status);
      if (res.status == 404) message = fmt::format("Unknown path {} {}", req.method, req.path);
      if (res.status == 413) message = "The request body is larger than the server accepts (--max-body)";
      res.set_content(error_body(res.status, message).dump(), "application/json");
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string message = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        message = e.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content(error_body(500, message).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                      "application/json");
    });
    http.Options(R"(.*)", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization");
      res.status = 204;
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      const auto page = chat_page_html();
      res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
    const auto health = [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"status", "ok"}});
    };
    http.Get("/health", health);
    http.Get("/v1/health", health);
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      // The scheduler before the counters: a sequence a disconnect cancelled is counted by then.
      const SchedulerStats stats = scheduler->stats();
      HttpCounters c;
      {
        std::lock_guard lock(counters_mutex);
        c = counters;
      }
      res.set_content(prometheus_text(stats, c), "text/plain; version=0.0.4");
    });
    const auto models = [this](const httplib::Request&, httplib::Response& res) {
      ojson model = {{"id", options.model_id},
                     {"object", "model"},
                     {"created", created},
                     {"owned_by", "tandem"},
                     {"meta", {{"n_ctx", context()}, {"n_vocab", engine.config().vocab_size}}}};
      send_json(res, 200, {{"object", "list"}, {"data", ojson::array({model})}});
    };
    http.Get("/v1/models", models);
    http.Get("/models", models);
    const auto chat = [this](const httplib::Request& req, httplib::Response& res) {
      handle_completion(req, res, Endpoint::chat);
    };
    const auto completion = [this](const httplib::Request& req, httplib::Response& res) {
      handle_completion(req, res, Endpoint::completion);
    };
    http.Post("/v1/chat/completions", chat);
    http.Post("/chat/completions", chat);
    http.Post("/v1/completions", completion);
    http.Post("/completions", completion);
  }

  // The prompt's ids, checked against the context and max_tokens; sets `starts_in_reasoning`.
  std::vector<int32_t> prompt_ids(const CompletionRequest& r, bool& starts_in_reasoning) {
    std::vector<int32_t> ids;
    if (r.endpoint == Endpoint::chat) {
      if (!chat_template) throw ApiError(400, "the model has no chat template; use /v1/completions");
      ChatRequest request;
      request.ordered_messages = &r.messages;
      if (!r.tools.is_null()) request.ordered_tools = &r.tools;
      request.ordered_extra = &r.template_kwargs;
      request.add_generation_prompt = true;
      request.max_steps = 5'000'000;
      std::string text;
      try {
        text = chat_template->render(request);
      } catch (const Error& e) {
        // Templates like Qwen3's read a tool-calling turn's content as text, where OpenAI sends
        // null: try again with "" before giving up.
        ojson patched = r.messages;
        bool changed = false;
        for (auto& m : patched)
          if (m.contains("content") && m["content"].is_null()) {
            m["content"] = "";
            changed = true;
          }
        request.ordered_messages = &patched;
        try {
          if (!changed) throw;
          text = chat_template->render(request);
        } catch (const Error&) {
          throw ApiError(400, std::string("the chat template cannot render these messages: ") + e.what());
        }
      }
      std::string_view tail = text;
      while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.remove_suffix(1);
      starts_in_reasoning = tail.ends_with("<think>");
      ids = tokenizer->encode(text, /*add_special=*/false);
    } else if (!r.prompt_ids.empty()) {
      ids = r.prompt_ids;
      for (int32_t id : ids)
        if (id >= engine.config().vocab_size)
          throw ApiError(400, fmt::format("token id {} in 'prompt' is outside the vocabulary", id),
                         "invalid_request_error", "prompt");
    } else {
      ids = tokenizer->encode(r.prompt_text, /*add_special=*/true);
    }
    if (ids.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", "prompt");
    const auto n = static_cast<int64_t>(ids.size());
    const int64_t want = r.max_tokens.value_or(1);
    if (n + want > context())
      throw ApiError(
          400,
          fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                      "({} in the messages, {} in the completion). Please reduce the length of the "
                      "messages or completion.",
                      context(), n + want, n, want),
          "invalid_request_error", r.endpoint == Endpoint::chat ? "messages" : "prompt",
          "context_length_exceeded");
    return ids;
  }

  void handle_completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    {
      std::lock_guard lock(counters_mutex);
      ++(endpoint == Endpoint::chat ? counters.chat_requests : counters.completion_requests);
    }
    try {
      ojson body;
      // Copying or destroying nested JSON recurses: a body nested deeper than any real request is
      // refused while it is parsed (its deep parts are never built).
      constexpr int kMaxDepth = 64;
      bool too_deep = false;
      try {
        body = ojson::parse(req.body, [&](int depth, ojson::parse_event_t, ojson&) {
          if (depth > kMaxDepth) too_deep = true;
          return depth <= kMaxDepth;
        });
      } catch (const nlohmann::json::exception& e) {
        throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
      }
      if (too_deep)
        throw ApiError(400, fmt::format("the request body nests JSON deeper than {} levels", kMaxDepth));
      RequestLimits limits;
      limits.max_tokens = options.max_tokens_limit > 0 ? options.max_tokens_limit : context();
      CompletionRequest r = parse_completion_request(body, endpoint, limits);
      if (!r.model.empty() && r.model != options.model_id)
        throw ApiError(
            404,
            fmt::format("The model '{}' does not exist (this server serves '{}')", r.model, options.model_id),
            "invalid_request_error", "model", "model_not_found");
      start_generation(std::move(r), res);
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  }

  void start_generation(CompletionRequest r, httplib::Response& res) {
    bool starts_in_reasoning = false;
    std::vector<int32_t> ids = prompt_ids(r, starts_in_reasoning);
    const auto prompt_tokens = static_cast<int64_t>(ids.size());
    auto channel = std::make_shared<Channel>();
    SequenceParams p;
    p.prompt = std::move(ids);
    p.sampling = r.sampling;
    if (!r.seed_given) p.sampling.seed = std::random_device{}();
    p.max_new_tokens = r.max_tokens.value_or(context() - prompt_tokens);
    if (!r.ignore_eos) p.eos_ids = eos_ids;
    p.stop_strings = r.stop;
    p.skip_special_text = true;
    p.on_token = [channel](int32_t, std::string_view text) {
      if (text.empty()) return true;
      std::lock_guard lock(channel->mutex);
      channel->text += text;
      channel->changed.notify_one();
      return true;
    };
    // The id is known only once submit returns, which may be after the sequence ended.
    auto id_slot = std::make_shared<std::atomic<uint64_t>>(0);
    p.on_finish = [channel, live = live, id_slot](const SequenceResult& result) {
      {
        std::lock_guard lock(channel->mutex);
        channel->result = result;
        channel->finished = true;
        channel->changed.notify_one();
      }
      if (const uint64_t id = id_slot->exchange(UINT64_MAX); id != 0) live->remove(id);
    };
    uint64_t id = 0;
    try {
      id = scheduler->submit(std::move(p));
      live->add(id);
      if (id_slot->exchange(id) == UINT64_MAX) live->remove(id);  // it finished already
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::out_of_memory)
        throw ApiError(429, std::string("The server is busy: ") + e.what() + "; retry later",
                       "rate_limit_error", "", "rate_limit_exceeded");
      if (e.kind() == ErrorKind::cancelled)
        throw ApiError(503, "The server is shutting down", "server_error");
      throw ApiError(400, e.what());
    }
    const uint64_t request_number = next_request++;
    const bool chat = r.endpoint == Endpoint::chat;
    const std::string response_id = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", request_number);
    const bool split_reasoning = chat && !r.reasoning_inline.value_or(options.reasoning_inline);
    auto parser =
        std::make_shared<ReplyParser>(chat ? tool_syntax : ToolCallSyntax::none, chat && !r.tools.is_null(),
                                      split_reasoning, starts_in_reasoning);
    auto state = std::make_shared<StreamState>();
    state->id = id;
    state->response_id = response_id;
    state->chat = chat;
    state->stream = r.stream;
    state->include_usage = r.include_usage;
    state->prompt_tokens = prompt_tokens;
    state->created = unix_time();

    const auto provider = [this, channel, parser, state](size_t, httplib::DataSink& sink) {
      return pump(*channel, *parser, *state, sink);
    };
    const auto release = [this, channel, state](bool) {
      std::lock_guard lock(channel->mutex);
      if (channel->finished) return;
      // The count goes up under the same lock as the cancel: /metrics reads the scheduler first,
      // so once it shows the sequence gone it also shows the disconnect.
      std::lock_guard counters_lock(counters_mutex);
      if (scheduler->cancel(state->id)) ++counters.client_disconnects;
    };
    res.status = 200;
    if (r.stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", provider, release);
    } else {
      res.set_chunked_content_provider("application/json", provider, release);
    }
  }

  struct StreamState {
    uint64_t id = 0;
    std::string response_id;
    bool chat = true, stream = false, include_usage = false, sent_role = false;
    int64_t prompt_tokens = 0, created = 0;
    int tool_index = 0;
    std::string content, reasoning;
    ojson tool_calls = ojson::array();
  };

  ojson usage(const StreamState& s, const SequenceResult& r) const {
    const auto completion = static_cast<int64_t>(r.ids.size());
    return {{"prompt_tokens", s.prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", s.prompt_tokens + completion},
            {"prompt_tokens_details", {{"cached_tokens", r.cached_prompt_tokens}}}};
  }

  ojson chunk(const StreamState& s, ojson choice) const {
    return {{"id", s.response_id},
            {"object", s.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", s.created},
            {"model", options.model_id},
            {"choices", ojson::array({std::move(choice)})}};
  }

  static bool write_event(httplib::DataSink& sink, const ojson& data) {
    const std::string line =
        "data: " + data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n\n";
    return sink.write(line.data(), line.size());
  }

  // Applies a parsed delta: accumulates it, and in a stream sends it as one chunk.
  bool forward(StreamState& s, const ReplyDelta& d, httplib::DataSink& sink) {
    if (d.empty()) return true;
    s.content += d.content;
    s.reasoning += d.reasoning;
    ojson calls = ojson::array();
    for (const auto& call : d.tool_calls) {
      ojson c = {{"index", s.tool_index},
                 {"id", fmt::format("call_{}_{}", s.id, s.tool_index)},
                 {"type", "function"},
                 {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
      ++s.tool_index;
      ojson whole = c;
      whole.erase("index");
      s.tool_calls.push_back(whole);
      calls.push_back(std::move(c));
    }
    if (!s.stream) return true;
    if (!s.chat)
      return write_event(
          sink,
          chunk(s, {{"index", 0}, {"text", d.content}, {"logprobs", nullptr}, {"finish_reason", nullptr}}));
    ojson delta = ojson::object();
    if (!s.sent_role) {
      delta["role"] = "assistant";
      s.sent_role = true;
    }
    if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
    if (!d.content.empty()) delta["content"] = d.content;
    if (!calls.empty()) delta["tool_calls"] = calls;
    return write_event(
        sink, chunk(s, {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}}));
  }

  // Runs on the connection's thread until the sequence ends or the client goes away (a failed
  // write: the release callback then cancels the sequence).
  bool pump(Channel& channel, ReplyParser& parser, StreamState& s, httplib::DataSink& sink) {
    if (s.stream && s.chat && !s.sent_role) {
      s.sent_role = true;
      if (!write_event(sink, chunk(s, {{"index", 0},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}})))
        return false;
    }
    for (;;) {
      if (stopping.load()) return false;  // shutting down: the release callback cancels the sequence
      std::string text;
      bool finished = false;
      {
        std::unique_lock lock(channel.mutex);
        channel.changed.wait_for(lock, std::chrono::seconds(1),
                                 [&] { return channel.finished || !channel.text.empty(); });
        text.swap(channel.text);
        finished = channel.finished;
      }
      if (!text.empty()) {
        if (!forward(s, parser.push(text), sink)) return false;
      } else if (!finished) {
        // Nothing new for a second: a keep-alive write finds a client that has gone.
        const char* keep_alive = s.stream ? ": keep-alive\n\n" : " ";
        if (!sink.write(keep_alive, std::strlen(keep_alive))) return false;
      }
      if (!finished) continue;
      if (!forward(s, parser.finish(), sink)) return false;
      const SequenceResult& result = channel.result;
      const bool tools = parser.tool_calls_seen() > 0;
      const char* reason = finish_reason(result, tools);
      if (s.stream) {
        if (!result.error.empty()) {
          if (!write_event(sink, error_body(500, result.error))) return false;
        } else if (s.chat) {
          if (!write_event(sink, chunk(s, {{"index", 0},
                                           {"delta", ojson::object()},
                                           {"logprobs", nullptr},
                                           {"finish_reason", reason}})))
            return false;
        } else {
          if (!write_event(
                  sink,
                  chunk(s, {{"index", 0}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", reason}})))
            return false;
        }
        if (s.include_usage) {
          ojson last = chunk(s, nullptr);
          last["choices"] = ojson::array();
          last["usage"] = usage(s, result);
          if (!write_event(sink, last)) return false;
        }
        const std::string done = "data: [DONE]\n\n";
        if (!sink.write(done.data(), done.size())) return false;
      } else {
        ojson body;
        if (!result.error.empty()) {
          body = error_body(500, result.error);
        } else if (s.chat) {
          ojson message = {{"role", "assistant"}};
          message["content"] = s.content.empty() && tools ? ojson(nullptr) : ojson(s.content);
          if (!s.reasoning.empty()) message["reasoning_content"] = s.reasoning;
          if (tools) message["tool_calls"] = s.tool_calls;
          body = {
              {"id", s.response_id},
              {"object", "chat.completion"},
              {"created", s.created},
              {"model", options.model_id},
              {"choices",
               ojson::array(
                   {{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", reason}}})},
              {"usage", usage(s, result)}};
        } else {
          body = {
              {"id", s.response_id},
              {"object", "text_completion"},
              {"created", s.created},
              {"model", options.model_id},
              {"choices",
               ojson::array(
                   {{{"index", 0}, {"text", s.content}, {"logprobs", nullptr}, {"finish_reason", reason}}})},
              {"usage", usage(s, result)}};
        }
        const std::string text_body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        if (!sink.write(text_body.data(), text_body.size())) return false;
      }
      sink.done();
      return true;
    }
  }
};

HttpServer::HttpServer(Engine& engine, const ChatTemplate* chat_template, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, chat_template, std::move(options))) {}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  auto& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->http.bind_to_any_port(o.host);
    if (port <= 0) throw Error(ErrorKind::io, fmt::format("cannot listen on {}: no free port", o.host));
    o.port = port;
    impl_->http.widen_backlog(1024);
    return port;
  }
  if (!impl_->http.bind_to_port(o.host, o.port))
    throw Error(
        ErrorKind::io,
        fmt::format("cannot listen on {}:{} (in use, or not an address of this machine)", o.host, o.port));
  impl_->http.widen_backlog(1024);
  return o.port;
}

void HttpServer::run() { impl_->http.listen_after_bind(); }

void HttpServer::stop() {
  impl_->stopping.store(true);
  impl_->http.stop();
}

Scheduler& HttpServer::scheduler() { return *impl_->scheduler; }

}  // namespace tandem::server
