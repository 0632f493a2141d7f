// Tool calls and reasoning in the model's reply → OpenAI fields. The scripted model output is
// what the real Qwen3 and DeepSeek-V3 chat templates render for an assistant turn with tool
// calls (so parsing inverts the template), fed whole, one character at a time and token by token.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include "tandem/server/reply_parser.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
using namespace tandem::server;

namespace {

ReplyDelta feed(ReplyParser& parser, const std::vector<std::string>& pieces) {
  ReplyDelta all;
  const auto add = [&](const ReplyDelta& d) {
    all.content += d.content;
    all.reasoning += d.reasoning;
    all.tool_calls.insert(all.tool_calls.end(), d.tool_calls.begin(), d.tool_calls.end());
  };
  for (const auto& p : pieces) add(parser.push(p));
  add(parser.finish());
  return all;
}

std::vector<std::string> whole(const std::string& s) { return {s}; }
std::vector<std::string> by_char(const std::string& s) {
  std::vector<std::string> out;
  for (char c : s) out.emplace_back(1, c);
  return out;
}
std::vector<std::string> by_token(const Tokenizer& tok, const std::string& s) {
  std::vector<std::string> out;
  IncrementalDecoder decoder(tok);
  for (int32_t id : tok.encode(s, false)) out.push_back(decoder.push(id));
  out.push_back(decoder.flush());
  return out;
}

// The template's rendering of the last assistant turn: everything after the prompt that ends
// before it (rendered with add_generation_prompt), minus the end-of-turn marker.
std::string rendered_reply(const ChatTemplate& tmpl, const nlohmann::json& messages,
                           const nlohmann::json& tools, const std::string& end_marker) {
  nlohmann::json before = messages;
  before.erase(before.size() - 1);
  ChatRequest prefix;
  prefix.messages = &before;
  prefix.tools = &tools;
  prefix.add_generation_prompt = true;
  ChatRequest full;
  full.messages = &messages;
  full.tools = &tools;
  const std::string a = tmpl.render(prefix), b = tmpl.render(full);
  REQUIRE(b.starts_with(a));
  std::string reply = b.substr(a.size());
  const auto end = reply.rfind(end_marker);
  REQUIRE(end != std::string::npos);
  return reply.substr(0, end);
}

const nlohmann::json kTools =
    nlohmann::json::parse(R"([{"type": "function", "function": {"name": "get_weather",
  "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
  "required": ["city"]}}}])");

// Qwen3's template reads the content of a tool-calling turn as text ("" there), DeepSeek-V3's wants
// null (OpenAI's wire form); the server retries a failed render with "" for null.
nlohmann::json conversation_with_calls(bool null_content = true) {
  auto m = nlohmann::json::parse(R"([
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
      {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
  ])");
  if (!null_content) m[1]["content"] = "";
  return m;
}

void check_two_calls(const ReplyDelta& d) {
  REQUIRE(d.tool_calls.size() == 2);
  CHECK(d.tool_calls[0].name == "get_weather");
  CHECK(nlohmann::json::parse(d.tool_calls[0].arguments) == nlohmann::json{{"city", "Paris"}});
  CHECK(nlohmann::json::parse(d.tool_calls[1].arguments) == nlohmann::json{{"city", "Oslo"}});
  CHECK(d.content.empty());
}

}  // namespace

TEST_CASE("reply parser: Qwen3 tool calls rendered by the real template parse back", "[server][tools]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::string dir = fx + "/tokenizers/qwen3";
  const auto tok = Tokenizer::load(dir);
  const auto tmpl = ChatTemplate::load(dir);
  REQUIRE(detect_tool_call_syntax(*tok) == ToolCallSyntax::qwen3);
  const std::string reply = rendered_reply(*tmpl, conversation_with_calls(false), kTools, "<|im_end|>");
  INFO(reply);
  REQUIRE(reply.find("<tool_call>") != std::string::npos);
  for (const auto& pieces : {whole(reply), by_char(reply), by_token(*tok, reply)}) {
    ReplyParser parser(ToolCallSyntax::qwen3, true, true);
    check_two_calls(feed(parser, pieces));
    CHECK(parser.tool_calls_seen() == 2);
  }
  // Without tools in the request the same text stays content.
  ReplyParser plain(ToolCallSyntax::qwen3, false, true);
  CHECK(feed(plain, whole(reply)).content.find("<tool_call>") != std::string::npos);
}

TEST_CASE("reply parser: DeepSeek-V3 tool-call tokens rendered by the real template parse back",
          "[server][tools]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::string dir = fx + "/tokenizers/deepseek_v3";
  const auto tok = Tokenizer::load(dir);
  const auto tmpl = ChatTemplate::load(dir);
  REQUIRE(detect_tool_call_syntax(*tok) == ToolCallSyntax::deepseek_v3);
  const std::string reply = rendered_reply(*tmpl, conversation_with_calls(), kTools, "<｜end▁of▁sentence｜>");
  INFO(reply);
  REQUIRE(reply.find("<｜tool▁calls▁begin｜>") != std::string::npos);
  for (const auto& pieces : {whole(reply), by_char(reply), by_token(*tok, reply)}) {
    ReplyParser parser(ToolCallSyntax::deepseek_v3, true, true);
    check_two_calls(feed(parser, pieces));
  }
  // A tool result goes back through the template as DeepSeek's tool output block.
  auto messages = conversation_with_calls();
  messages.push_back({{"role", "tool"}, {"tool_call_id", "a"}, {"content", "sunny"}});
  ChatRequest request;
  request.messages = &messages;
  request.tools = &kTools;
  request.add_generation_prompt = true;
  CHECK(tmpl->render(request).find("<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>") != std::string::npos);
}

TEST_CASE("reply parser: <think> goes to reasoning, or stays inline", "[server][reasoning]") {
  const std::string out = "<think>\nThe user greets.\n</think>\n\nHello there!";
  for (const auto& pieces : {whole(out), by_char(out)}) {
    ReplyParser split(ToolCallSyntax::qwen3, false, true);
    const auto d = feed(split, pieces);
    CHECK(d.reasoning == "The user greets.");
    CHECK(d.content == "Hello there!");
    ReplyParser inline_(ToolCallSyntax::qwen3, false, false);
    CHECK(feed(inline_, pieces).content == out);
  }
  // The prompt opened the block (DeepSeek-R1 style): the reply starts inside it.
  ReplyParser opened(ToolCallSyntax::none, false, true, true);
  const auto d = feed(opened, whole("thinking…</think>answer"));
  CHECK(d.reasoning == "thinking…");
  CHECK(d.content == "answer");
  // Reasoning then a tool call.
  ReplyParser both(ToolCallSyntax::qwen3, true, true);
  const auto t = feed(
      both,
      by_char(
          "<think>plan</think>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"));
  CHECK(t.reasoning == "plan");
  REQUIRE(t.tool_calls.size() == 1);
  CHECK(t.tool_calls[0].name == "f");
  CHECK(t.tool_calls[0].arguments == R"({"x":1})");
}

TEST_CASE("reply parser: broken or unfinished tool calls stay visible as content", "[server][tools]") {
  ReplyParser bad_json(ToolCallSyntax::qwen3, true, true);
  const auto d = feed(bad_json, whole("<tool_call>{not json}</tool_call>"));
  CHECK(d.tool_calls.empty());
  CHECK(d.content == "<tool_call>{not json}</tool_call>");
  ReplyParser cut(ToolCallSyntax::qwen3, true, true);
  const auto c = feed(cut, whole("Sure. <tool_call>{\"name\": \"f\""));
  CHECK(c.tool_calls.empty());
  CHECK(c.content == "Sure. <tool_call>{\"name\": \"f\"");
  ReplyParser text(ToolCallSyntax::qwen3, true, true);
  CHECK(feed(text, by_char("a < b and <tool")).content == "a < b and <tool");
}
