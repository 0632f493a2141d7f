#pragma once
// Chat templates: a Jinja-subset interpreter that renders HF chat templates exactly as
// transformers' apply_chat_template does.
#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace tandem {

struct ChatRequest {
  const nlohmann::json* messages = nullptr;  // array of {role, content, tool_calls?, ...}
  const nlohmann::json* tools = nullptr;     // optional array
  const nlohmann::json* extra = nullptr;     // optional object: enable_thinking, ...
  bool add_generation_prompt = false;
  // The same inputs as ordered_json, which keeps object keys in document order (what `tojson`
  // prints, e.g. tool schemas). Each one, when set, is used instead of its field above.
  const nlohmann::ordered_json* ordered_messages = nullptr;
  const nlohmann::ordered_json* ordered_tools = nullptr;
  const nlohmann::ordered_json* ordered_extra = nullptr;
  // A template cannot run forever: past this many evaluation steps (statements, loop
  // iterations, expressions) render throws Error(out_of_range). Real chat templates over long
  // conversations use well under a million.
  uint64_t max_steps = 50'000'000;
  // When set and it becomes true, render throws Error(cancelled) soon after.
  const std::atomic<bool>* cancel = nullptr;
};

class ChatTemplate {
 public:
  // Throws Error(corrupt_file / unsupported) naming the construct and line.
  static std::unique_ptr<ChatTemplate> parse(std::string_view source, std::string bos_token = "",
                                             std::string eos_token = "");
  // From a model path: tokenizer_config.json's chat_template, chat_template.jinja, or GGUF
  // tokenizer.chat_template. Returns nullptr when the model ships none.
  static std::unique_ptr<ChatTemplate> load(const std::string& model_path);
  virtual ~ChatTemplate() = default;
  virtual std::string render(const ChatRequest& request) const = 0;
};

}  // namespace tandem
