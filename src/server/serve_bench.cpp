#include "tandem/server/serve_bench.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "tandem/engine/engine.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/server/http_server.hpp"

namespace tandem::server {

namespace {

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  const auto at = [&](double q) {
    const auto i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
  };
  p.p50 = at(0.5);
  p.p90 = at(0.9);
  p.p99 = at(0.99);
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / static_cast<double>(v.size());
  return p;
}

struct RequestTiming {
  double ttft_ms = -1;
  std::vector<double> gaps_ms;
  int64_t tokens = 0;
  int64_t cached_prompt_tokens = 0;
  double decode_ms = 0;  // first token → last event
};

// One streaming /v1/completions request; the SSE events are parsed as they arrive.
RequestTiming one_request(httplib::Client& client, const std::string& body) {
  RequestTiming t;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  std::string buffer;
  Clock::time_point last;
  const auto start = Clock::now();
  Clock::time_point first;
  req.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
    buffer.append(data, length);
    for (size_t cut; (cut = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, cut + 2)) {
      const std::string_view event(buffer.data(), cut);
      if (!event.starts_with("data: {")) continue;
      const auto j = nlohmann::json::parse(event.substr(6));
      if (j.contains("usage") && j["usage"].is_object()) {
        t.tokens = j["usage"]["completion_tokens"].get<int64_t>();
        t.cached_prompt_tokens = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t{0});
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const auto now = Clock::now();
      if (j["choices"][0].value("text", "").empty()) continue;
      if (t.ttft_ms < 0) {
        t.ttft_ms = ms_between(start, now);
        first = now;
      } else {
        t.gaps_ms.push_back(ms_between(last, now));
      }
      last = now;
    }
    return true;
  };
  const auto result = client.send(req);
  if (!result || result->status != 200)
    throw Error(ErrorKind::internal,
                fmt::format("bench serve: a request failed ({})",
                            result ? std::to_string(result->status) : httplib::to_string(result.error())));
  if (t.ttft_ms >= 0) t.decode_ms = ms_between(first, last);
  return t;
}

// The same request submitted to the scheduler directly: each sampled id is an event.
RequestTiming one_sequence(Scheduler& scheduler, std::vector<int32_t> prompt, int64_t max_tokens) {
  struct Shared {
    std::mutex mutex;
    std::condition_variable done_changed;
    bool done = false;
    std::string error;
    RequestTiming timing;
    Clock::time_point start, last;
  } shared;
  SequenceParams p;
  p.prompt = std::move(prompt);
  p.max_new_tokens = max_tokens;  // no EOS ids: every reply has max_tokens tokens
  p.on_token = [&shared](int32_t id, std::string_view) {
    if (id < 0) return true;
    const auto now = Clock::now();
    RequestTiming& t = shared.timing;  // only this callback and, after done, the caller touch it
    if (t.ttft_ms < 0) {
      t.ttft_ms = ms_between(shared.start, now);
    } else {
      t.gaps_ms.push_back(ms_between(shared.last, now));
      t.decode_ms += ms_between(shared.last, now);
    }
    shared.last = now;
    ++t.tokens;
    return true;
  };
  p.on_finish = [&shared](const SequenceResult& r) {
    std::lock_guard lock(shared.mutex);
    shared.timing.cached_prompt_tokens = r.cached_prompt_tokens;
    shared.error = r.error;
    shared.done = true;
    shared.done_changed.notify_one();
  };
  shared.start = Clock::now();
  scheduler.submit(std::move(p));
  std::unique_lock lock(shared.mutex);
  shared.done_changed.wait(lock, [&] { return shared.done; });
  if (!shared.error.empty()) throw Error(ErrorKind::internal, "bench serve: a sequence failed: " + shared.error);
  return shared.timing;
}

}  // namespace

std::vector<ServeBenchRow> run_serve_bench(Engine& engine, const ServeBenchOptions& o) {
  if (o.clients.empty()) throw Error(ErrorKind::invalid_argument, "--clients lists no concurrency");
  for (int64_t c : o.clients)
    if (c < 1 || c > 1024)
      throw Error(ErrorKind::invalid_argument, fmt::format("--clients {} is outside 1..1024", c));
  if (o.requests_per_client < 1 || o.requests_per_client > 10000)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--requests {} is outside 1..10000", o.requests_per_client));
  if (o.prompt_tokens < 1 || o.max_tokens < 1)
    throw Error(ErrorKind::invalid_argument, "--prompt-tokens and --max-tokens must be at least 1");
  const int64_t most = *std::max_element(o.clients.begin(), o.clients.end());
  if (o.repetitions < 1 || o.repetitions > 100)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--repetitions {} is outside 1..100", o.repetitions));
  ServerOptions so;
  so.port = 0;
  so.parallel = o.parallel > 0 ? o.parallel : most;
  so.max_batch_tokens = o.max_batch_tokens;
  so.max_queue = most * 2;
  so.model_id = "bench";
  std::unique_ptr<HttpServer> server;
  std::thread serving;
  int port = 0;
  if (o.direct) {
    engine.scheduler().set_options(SchedulerOptions{so.parallel, so.max_batch_tokens, so.max_queue});
  } else {
    server = std::make_unique<HttpServer>(engine, engine.chat_template(), so);
    port = server->bind();
    serving = std::thread([&] { server->run(); });
  }
  struct Stop {
    std::unique_ptr<HttpServer>& s;
    std::thread& t;
    ~Stop() {
      if (!s) return;
      s->stop();
      t.join();
    }
  } stop{server, serving};

  const int64_t vocab = engine.config().vocab_size;
  const auto prompt_for = [&](std::mt19937_64& r) {
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < o.prompt_tokens; ++i)
      prompt.push_back(static_cast<int32_t>(r() % static_cast<uint64_t>(vocab)));
    return prompt;
  };
  // One client's requests in turn: over its own HTTP connection, or straight to the scheduler.
  const auto run_client = [&](const std::vector<std::vector<int32_t>>& prompts, std::vector<RequestTiming>& out) {
    if (o.direct) {
      for (const auto& prompt : prompts) out.push_back(one_sequence(engine.scheduler(), prompt, o.max_tokens));
      return;
    }
    httplib::Client client("127.0.0.1", port);
    client.set_read_timeout(600);
    for (const auto& prompt : prompts) {
      const std::string body = nlohmann::json{{"prompt", prompt},    {"max_tokens", o.max_tokens},
                                              {"temperature", 0},    {"ignore_eos", true},
                                              {"stream", true},      {"stream_options", {{"include_usage", true}}}}
                                   .dump();
      out.push_back(one_request(client, body));
    }
  };
  {  // warm-up: pages the weights in
    std::mt19937_64 rng(o.seed);
    std::vector<RequestTiming> ignored;
    run_client({prompt_for(rng)}, ignored);
  }

  std::vector<std::vector<ServeBenchRow>> runs(o.clients.size());
  for (int64_t rep = 0; rep < o.repetitions; ++rep)
    for (size_t level = 0; level < o.clients.size(); ++level) {
      const int64_t clients = o.clients[level];
      std::vector<std::vector<RequestTiming>> timings(static_cast<size_t>(clients));
      std::vector<std::string> errors(static_cast<size_t>(clients));
      std::vector<std::thread> threads;
      const auto start = Clock::now();
      for (int64_t c = 0; c < clients; ++c) {
        // Every repetition, level and client sends prompts of its own, so no request finds another's
        // prompt in the prefix cache (cached_prompt_tokens in the rows says whether any did).
        std::mt19937_64 r(o.seed * 7919 + static_cast<uint64_t>(c) + static_cast<uint64_t>(clients) * 104729 +
                          static_cast<uint64_t>(rep) * 15485863);
        std::vector<std::vector<int32_t>> prompts;
        for (int64_t k = 0; k < o.requests_per_client; ++k) prompts.push_back(prompt_for(r));
        threads.emplace_back([&, c, prompts = std::move(prompts)] {
          try {
            run_client(prompts, timings[static_cast<size_t>(c)]);
          } catch (const std::exception& e) {
            errors[static_cast<size_t>(c)] = e.what();
          }
        });
      }
      for (auto& t : threads) t.join();
      const double seconds = ms_between(start, Clock::now()) / 1000.0;
      for (const auto& e : errors)
        if (!e.empty()) throw Error(ErrorKind::internal, e);
      ServeBenchRow row;
      row.clients = clients;
      row.requests = clients * o.requests_per_client;
      row.seconds = seconds;
      std::vector<double> ttft, gaps;
      double decode_tps_sum = 0;
      for (const auto& per_client : timings) {
        int64_t after_first = 0;
        double decode_ms = 0;
        for (const auto& t : per_client) {
          row.output_tokens += t.tokens;
          row.cached_prompt_tokens += t.cached_prompt_tokens;
          if (t.ttft_ms >= 0) ttft.push_back(t.ttft_ms);
          gaps.insert(gaps.end(), t.gaps_ms.begin(), t.gaps_ms.end());
          after_first += std::max<int64_t>(t.tokens - 1, 0);
          decode_ms += t.decode_ms;
        }
        if (decode_ms > 0) decode_tps_sum += static_cast<double>(after_first) / (decode_ms / 1000.0);
      }
      row.output_tokens_per_second = static_cast<double>(row.output_tokens) / seconds;
      row.decode_tokens_per_second = decode_tps_sum;
      row.ttft_ms = percentiles(std::move(ttft));
      row.itl_ms = percentiles(std::move(gaps));
      runs[level].push_back(row);
    }
  std::vector<ServeBenchRow> rows;
  for (auto& level : runs) {
    std::sort(level.begin(), level.end(), [](const ServeBenchRow& a, const ServeBenchRow& b) {
      return a.decode_tokens_per_second < b.decode_tokens_per_second;
    });
    rows.push_back(level[level.size() / 2]);
  }
  const auto one =
      std::find_if(rows.begin(), rows.end(), [](const ServeBenchRow& r) { return r.clients == 1; });
  if (one != rows.end())
    for (auto& r : rows) {
      r.speedup = r.output_tokens_per_second / one->output_tokens_per_second;
      if (one->decode_tokens_per_second > 0)
        r.decode_speedup = r.decode_tokens_per_second / one->decode_tokens_per_second;
    }
  return rows;
}

}  // namespace tandem::server
