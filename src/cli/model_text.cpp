#include "cli/model_text.hpp"

#include <fmt/core.h>

#include <string_view>

#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

// The engine records "no tokenizer: REASON" / "no chat template: REASON" when loading failed.
std::string load_failure(const Engine& engine, std::string_view prefix) {
  for (const auto& warning : engine.warnings())
    if (warning.starts_with(prefix)) return warning.substr(prefix.size());
  return {};
}

}  // namespace

const Tokenizer& require_tokenizer(const Engine& engine, const std::string& model_path) {
  if (const Tokenizer* tokenizer = engine.tokenizer()) return *tokenizer;
  const std::string why = load_failure(engine, "no tokenizer: ");
  throw Error(ErrorKind::unsupported,
              why.empty() ? fmt::format("{}: the model ships no tokenizer", model_path)
                          : fmt::format("{}: cannot load the model's tokenizer: {}", model_path, why));
}

const ChatTemplate& require_chat_template(const Engine& engine, const std::string& model_path) {
  if (const ChatTemplate* tmpl = engine.chat_template()) return *tmpl;
  const std::string why = load_failure(engine, "no chat template: ");
  throw Error(ErrorKind::unsupported,
              why.empty() ? fmt::format("{}: the model ships no chat template", model_path)
                          : fmt::format("{}: cannot load the model's chat template: {}", model_path, why));
}

std::unique_ptr<ChatTemplate> chat_template_from_flags(const std::optional<std::string>& text,
                                                       const std::string& file, const Tokenizer& tokenizer) {
  if (text && !file.empty())
    throw Error(ErrorKind::invalid_argument, "give --chat-template or --chat-template-file, not both");
  std::string source;
  if (text) {
    source = *text;
    if (source.find("{{") == std::string::npos && source.find("{%") == std::string::npos)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--chat-template '{}': built-in template names are not supported; pass the Jinja "
                              "template text, or --chat-template-file FILE (without either, the model's own "
                              "template is used)",
                              source.substr(0, 40)));
  } else {
    source = read_file_bytes(file, uint64_t{16} << 20);
  }
  const auto token_text = [&](int32_t id) { return id >= 0 ? tokenizer.token_text(id) : std::string(); };
  return ChatTemplate::parse(source, token_text(tokenizer.bos_id()), token_text(tokenizer.eos_id()));
}

}  // namespace tandem::cli
