// One step loop per process: the server's requests go through the engine's Scheduler, the one C++
// sessions (and so the C ABI) use. A session decoding on one thread and a streaming HTTP request
// at the same time share forward passes, and both give what each gives alone.
#include <httplib.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/server/http_server.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;

namespace {

constexpr int64_t kTokens = 160;

std::string completion_text(int port, const std::vector<int32_t>& prompt) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(120);
  const nlohmann::json body = {
      {"prompt", prompt}, {"max_tokens", kTokens}, {"temperature", 0}, {"ignore_eos", true}};
  const auto res = client.Post("/v1/completions", body.dump(), "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const auto reply = nlohmann::json::parse(res->body);
  REQUIRE(reply["usage"]["completion_tokens"] == kTokens);
  return reply["choices"][0]["text"].get<std::string>();
}

GenerateResult session_generate(Engine& engine, const std::vector<int32_t>& prompt) {
  auto session = engine.new_session();
  GenerateOptions o;
  o.max_new_tokens = kTokens;
  o.skip_special_text = true;
  return generate(*session, engine.tokenizer(), prompt, o);
}

}  // namespace

TEST_CASE("serve: requests and sessions share the engine's one scheduler", "[server][scheduler]") {
  LoadOptions o;
  o.threads = 2;
  o.max_sessions = 3;
  o.max_context_tokens = 512;
  auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  const std::vector<int32_t> server_prompt = {51, 261, 220, 80, 84, 72, 481};
  const std::vector<int32_t> session_prompt = {13, 400, 17, 300};

  server::ServerOptions so;
  so.port = 0;
  so.parallel = 2;
  so.max_queue = 4;
  auto server = std::make_unique<server::HttpServer>(*engine, engine->chat_template(), so);
  CHECK(&server->scheduler() == &engine->scheduler());
  CHECK(engine->scheduler().options().max_running == 2);
  CHECK(engine->scheduler().options().max_waiting == 4);
  const int port = server->bind();
  std::thread serving([&] { server->run(); });

  // Alone first, one after the other.
  const std::string server_alone = completion_text(port, server_prompt);
  const GenerateResult session_alone = session_generate(*engine, session_prompt);
  const SchedulerStats before = engine->scheduler().stats();

  // Then at the same time.
  std::string server_together;
  GenerateResult session_together;
  std::thread client([&] { server_together = completion_text(port, server_prompt); });
  session_together = session_generate(*engine, session_prompt);
  client.join();
  const SchedulerStats after = engine->scheduler().stats();

  CHECK(server_together == server_alone);
  CHECK(session_together.ids == session_alone.ids);
  CHECK(static_cast<int64_t>(session_together.ids.size()) == kTokens);
  // The session's decode chunks joined the steps of the server's sequence: steps that ran more
  // than one chunk, and fewer steps than the two would take one after the other.
  const int64_t steps = after.steps - before.steps;
  INFO("steps " << steps << ", batched " << after.batched_steps - before.batched_steps);
  CHECK(after.session_chunks - before.session_chunks >= kTokens - 1);
  CHECK(after.batched_steps - before.batched_steps > kTokens / 4);
  CHECK(steps < 2 * kTokens - kTokens / 4);

  server->stop();
  serving.join();
  server.reset();
  CHECK(engine->scheduler().stats().kv_blocks_in_use == 0);
  CHECK(engine->scheduler().stats().running == 0);
}
