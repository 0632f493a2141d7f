#pragma once
// The model's reply text → what an OpenAI client expects, incrementally (text arrives token by
// token): `<think>…</think>` becomes reasoning_content (unless kept inline), and tool calls in the
// model's own syntax become tool_calls:
//   qwen3:       <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>   (any number)
//   deepseek_v3: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```
//                <｜tool▁call▁end｜>…<｜tool▁calls▁end｜>
// Text that could be the start of a marker is held back until it is known not to be one. A tool
// call whose JSON does not parse is passed on as content, as llama-server does.
#include <string>
#include <string_view>
#include <vector>

namespace tandem {
class Tokenizer;
}

namespace tandem::server {

enum class ToolCallSyntax { none, qwen3, deepseek_v3 };

// From the vocabulary: Qwen's <tool_call> token or DeepSeek-V3's tool-call tokens.
ToolCallSyntax detect_tool_call_syntax(const Tokenizer& tokenizer);

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text, as OpenAI sends it
};

struct ReplyDelta {
  std::string content;
  std::string reasoning;
  std::vector<ToolCall> tool_calls;
  bool empty() const { return content.empty() && reasoning.empty() && tool_calls.empty(); }
};

class ReplyParser {
 public:
  // `parse_tools`: the request offered tools. `split_reasoning`: <think> goes to reasoning (else
  // it stays in content). `starts_in_reasoning`: the prompt already opened a <think> block.
  ReplyParser(ToolCallSyntax syntax, bool parse_tools, bool split_reasoning,
              bool starts_in_reasoning = false);

  ReplyDelta push(std::string_view text);
  ReplyDelta finish();  // what is held back; an unfinished tool call becomes content
  int tool_calls_seen() const { return tool_calls_; }

 private:
  enum class Mode { content, reasoning, tool };
  void run(ReplyDelta& out, bool at_end);
  void emit(ReplyDelta& out, std::string_view text);
  bool parse_tool_block(std::string_view block, ReplyDelta& out);

  ToolCallSyntax syntax_;
  bool parse_tools_, split_reasoning_;
  Mode mode_ = Mode::content;
  std::string buffer_;
  bool content_started_ = false;
  bool reasoning_started_ = false;  // leading whitespace after </think> or between tool calls is dropped
  int tool_calls_ = 0;
};

}  // namespace tandem::server
