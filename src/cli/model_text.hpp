#pragma once
// The tokenizer and chat template a text command needs. Loading them is optional for the engine
// (inference by ids works without), so a failure is kept as a warning; these turn it back into an
// error that says the real cause ("tokenizer.json: unsupported model type ...") instead of
// claiming the model ships none.
#include <memory>
#include <optional>
#include <string>

namespace tandem {
class Engine;
class Tokenizer;
class ChatTemplate;
}  // namespace tandem

namespace tandem::cli {

const Tokenizer& require_tokenizer(const Engine& engine, const std::string& model_path);
const ChatTemplate& require_chat_template(const Engine& engine, const std::string& model_path);

// `--chat-template TEXT` / `--chat-template-file FILE` (llama.cpp's spellings): a Jinja template
// used instead of the model's, with the tokenizer's BOS/EOS text. llama.cpp's built-in template
// names are answered with an error that says to pass the template text.
std::unique_ptr<ChatTemplate> chat_template_from_flags(const std::optional<std::string>& text,
                                                       const std::string& file, const Tokenizer& tokenizer);

}  // namespace tandem::cli
