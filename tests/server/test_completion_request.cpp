// Request validation: what OpenAI accepts parses, wrong types and out-of-range values are 400s that
// name the field, unknown fields are ignored.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "tandem/server/api_error.hpp"
#include "tandem/server/completion_request.hpp"

using namespace tandem::server;
using ojson = nlohmann::ordered_json;

namespace {
CompletionRequest chat(const std::string& body) {
  return parse_completion_request(ojson::parse(body), Endpoint::chat, RequestLimits{.max_tokens = 100});
}
std::string error_param(const std::string& body, Endpoint endpoint = Endpoint::chat) {
  try {
    parse_completion_request(ojson::parse(body), endpoint, RequestLimits{.max_tokens = 100});
  } catch (const ApiError& e) {
    CHECK(e.status() == 400);
    CHECK(e.body()["error"]["type"] == "invalid_request_error");
    return e.body()["error"]["param"].is_null() ? "" : e.body()["error"]["param"].get<std::string>();
  }
  FAIL("no error for " << body);
  return {};
}
}  // namespace

TEST_CASE("request: a full chat request parses", "[server][request]") {
  const auto r = chat(R"({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
    "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0, "top_p": 0.5, "seed": 42,
    "stop": ["\n", "END"], "stream": true, "stream_options": {"include_usage": true},
    "tools": [{"type": "function", "function": {"name": "f"}}], "some_future_field": {"x": 1},
    "chat_template_kwargs": {"enable_thinking": false}, "reasoning_format": "none"})");
  CHECK(r.model == "m");
  CHECK(r.messages[0]["role"] == "system");
  CHECK(r.messages[1]["content"] == "hi there");
  CHECK(r.max_tokens == 7);  // max_completion_tokens wins
  CHECK(r.sampling.temperature == 0.0f);
  CHECK(r.sampling.top_p == 0.5f);
  CHECK(r.seed_given);
  CHECK(r.sampling.seed == 42);
  CHECK(r.stop == std::vector<std::string>{"\n", "END"});
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(r.tools.size() == 1);
  CHECK(r.template_kwargs["enable_thinking"] == false);
  CHECK(r.reasoning_inline == true);
  const auto d = chat(R"({"messages": [{"role": "user", "content": "x"}]})");
  CHECK_FALSE(d.max_tokens);
  CHECK(d.sampling.temperature == 1.0f);  // OpenAI's default
  CHECK_FALSE(d.stream);
  CHECK(d.stop.empty());
}

TEST_CASE("request: assistant tool calls and tool results are accepted", "[server][request]") {
  const auto r = chat(R"({"messages": [{"role": "user", "content": "x"},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "1", "content": "42"}], "tool_choice": "auto"})");
  CHECK(r.messages[1]["tool_calls"][0]["type"] == "function");
  CHECK(r.messages[1]["content"].is_null());
  CHECK(r.messages[2]["content"] == "42");
}

TEST_CASE("request: bad fields are 400s naming the field", "[server][request]") {
  CHECK(error_param(R"([1, 2])") == "");
  CHECK(error_param(R"({})") == "messages");
  CHECK(error_param(R"({"messages": []})") == "messages");
  CHECK(error_param(R"({"messages": "hi"})") == "messages");
  CHECK(error_param(R"({"messages": [{"content": "x"}]})") == "messages[0].role");
  CHECK(error_param(R"({"messages": [{"role": "wizard", "content": "x"}]})") == "messages[0].role");
  CHECK(error_param(R"({"messages": [{"role": "user"}]})") == "messages[0].content");
  CHECK(error_param(R"({"messages": [{"role": "user", "content": 5}]})") == "messages[0].content");
  CHECK(error_param(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})") ==
        "messages[0].content");
  const std::string ok = R"("messages": [{"role": "user", "content": "x"}])";
  CHECK(error_param("{" + ok + R"(, "model": 3})") == "model");
  CHECK(error_param("{" + ok + R"(, "max_tokens": "10"})") == "max_tokens");
  CHECK(error_param("{" + ok + R"(, "max_tokens": 0})") == "max_tokens");
  CHECK(error_param("{" + ok + R"(, "max_tokens": 101})") == "max_tokens");  // over the server's limit
  CHECK(error_param("{" + ok + R"(, "max_tokens": 1.5})") == "max_tokens");
  CHECK(error_param("{" + ok + R"(, "temperature": 3})") == "temperature");
  CHECK(error_param("{" + ok + R"(, "temperature": "hot"})") == "temperature");
  CHECK(error_param("{" + ok + R"(, "top_p": -0.1})") == "top_p");
  CHECK(error_param("{" + ok + R"(, "seed": "x"})") == "seed");
  CHECK(error_param("{" + ok + R"(, "stop": 7})") == "stop");
  CHECK(error_param("{" + ok + R"(, "stop": ["a", 1]})") == "stop");
  CHECK(error_param("{" + ok + R"(, "stream": "yes"})") == "stream");
  CHECK(error_param("{" + ok + R"(, "stream_options": true})") == "stream_options");
  CHECK(error_param("{" + ok + R"(, "n": 2})") == "n");
  CHECK(error_param("{" + ok + R"(, "tools": {}})") == "tools");
  CHECK(error_param("{" + ok + R"(, "presence_penalty": 5})") == "presence_penalty");
  CHECK(error_param("{" + ok + R"(, "reasoning_format": "xml"})") == "reasoning_format");
}

TEST_CASE("request: completion prompts as text, one-string arrays or token ids", "[server][request]") {
  const RequestLimits limits{.max_tokens = 100};
  CHECK(parse_completion_request(ojson::parse(R"({"prompt": "abc"})"), Endpoint::completion, limits)
            .prompt_text == "abc");
  CHECK(parse_completion_request(ojson::parse(R"({"prompt": ["abc"]})"), Endpoint::completion, limits)
            .prompt_text == "abc");
  CHECK(parse_completion_request(ojson::parse(R"({"prompt": [1, 2, 3]})"), Endpoint::completion, limits)
            .prompt_ids == std::vector<int32_t>{1, 2, 3});
  CHECK(error_param(R"({})", Endpoint::completion) == "prompt");
  CHECK(error_param(R"({"prompt": 5})", Endpoint::completion) == "prompt");
  CHECK(error_param(R"({"prompt": [1, -2]})", Endpoint::completion) == "prompt");
  CHECK(error_param(R"({"prompt": ["a", "b"]})", Endpoint::completion) == "prompt");
}

TEST_CASE("errors: OpenAI's shape and a type per status", "[server][request]") {
  CHECK(error_body(401, "no")["error"]["type"] == "authentication_error");
  CHECK(error_body(429, "busy")["error"]["type"] == "rate_limit_error");
  CHECK(error_body(503, "down")["error"]["type"] == "server_error");
  const auto b = ApiError(404, "gone", "invalid_request_error", "model", "model_not_found").body();
  CHECK(b["error"]["message"] == "gone");
  CHECK(b["error"]["param"] == "model");
  CHECK(b["error"]["code"] == "model_not_found");
}
