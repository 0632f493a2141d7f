// ChatTemplate: HF chat templates rendered the way transformers' apply_chat_template renders
// them (jinja2 with trim_blocks and lstrip_blocks; messages, tools, documents,
// add_generation_prompt, the special tokens, then the caller's extra variables).
#include "tandem/formats/read_file.hpp"
#include "tandem/text/chat_template.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "text/jinja/template.hpp"

namespace tandem {

namespace {

namespace fs = std::filesystem;

class JinjaChatTemplate final : public ChatTemplate {
 public:
  JinjaChatTemplate(jinja::Template parsed, std::string bos, std::string eos)
      : template_(std::move(parsed)), bos_(std::move(bos)), eos_(std::move(eos)) {}

  std::string render(const ChatRequest& request) const override {
    try {
      return render_context(request);
    } catch (const jinja::EvalError& e) {  // bad JSON input values
      throw Error(ErrorKind::invalid_argument, std::string("chat template input: ") + e.what());
    }
  }

 private:
  std::string render_context(const ChatRequest& request) const {
    using jinja::from_json;
    if (!request.messages && !request.ordered_messages)
      throw Error(ErrorKind::invalid_argument, "chat template: no messages given");
    jinja::Dict context;
    jinja::Value messages =
        request.ordered_messages ? from_json(*request.ordered_messages) : from_json(*request.messages);
    if (!messages.is_list())
      throw Error(ErrorKind::invalid_argument, "chat template: messages must be a JSON array");
    context.set("messages", std::move(messages));
    jinja::Value tools = request.ordered_tools ? from_json(*request.ordered_tools)
                         : request.tools       ? from_json(*request.tools)
                                               : jinja::Value(jinja::None{});
    context.set("tools", std::move(tools));
    context.set("documents", jinja::Value(jinja::None{}));
    context.set("add_generation_prompt", jinja::Value(request.add_generation_prompt));
    // transformers passes only the special tokens the tokenizer has: an absent one stays undefined
    if (!bos_.empty()) context.set("bos_token", jinja::Value(bos_));
    if (!eos_.empty()) context.set("eos_token", jinja::Value(eos_));
    jinja::Value extra = request.ordered_extra ? from_json(*request.ordered_extra)
                         : request.extra       ? from_json(*request.extra)
                                               : jinja::Value();
    if (!extra.is_undefined() && !extra.is_none()) {
      if (!extra.is_dict())
        throw Error(ErrorKind::invalid_argument, "chat template: extra variables must be a JSON object");
      for (const auto& [key, value] : extra.as_dict().items)
        if (key != "messages" && key != "tools" && key != "documents" && key != "add_generation_prompt")
          context.set(key, value);
    }
    jinja::RenderLimits limits;
    limits.max_steps = request.max_steps;
    limits.cancel = request.cancel;
    return template_.render(context, limits);
  }

  jinja::Template template_;
  std::string bos_, eos_;
};

std::string read_text_file(const fs::path& path) { return read_file_bytes(path.string()); }

nlohmann::json read_json_file(const fs::path& path) {
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::corrupt_file, path.string() + ": not valid JSON: " + e.what());
  }
}

// "bos_token": "<s>", {"content": "<s>", ...} (an AddedToken) or null
std::string special_token(const nlohmann::json& config, const char* key) {
  auto found = config.find(key);
  if (found == config.end() || found->is_null()) return {};
  if (found->is_string()) return found->get<std::string>();
  if (found->is_object() && found->contains("content") && (*found)["content"].is_string())
    return (*found)["content"].get<std::string>();
  throw Error(ErrorKind::corrupt_file,
              fmt::format("tokenizer_config.json: '{}' is neither a string nor an AddedToken", key));
}

// tokenizer_config.json's "chat_template": a string, or a list of {name, template} of which
// "default" is the one apply_chat_template uses.
std::optional<std::string> template_from_config(const nlohmann::json& value, const fs::path& file) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    for (const auto& entry : value)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        return entry["template"].get<std::string>();
    throw Error(ErrorKind::unsupported,
                file.string() + ": chat_template list has no template named 'default'");
  }
  if (value.is_null()) return std::nullopt;
  throw Error(ErrorKind::corrupt_file, file.string() + ": chat_template is neither a string nor a list");
}

std::unique_ptr<ChatTemplate> parse_named(const std::string& source, std::string bos, std::string eos,
                                          const std::string& origin) {
  try {
    return ChatTemplate::parse(source, std::move(bos), std::move(eos));
  } catch (const Error& e) {
    throw Error(e.kind(), origin + ": " + e.what());
  }
}

std::string gguf_token(const GgufFile& gguf, const char* id_key) {
  auto id = gguf.get_int(id_key);
  const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens");
  if (!id || !tokens) return {};
  const GgufArray& values = tokens->as_array();
  // Out of the vocabulary: the template gets no such token (the model loader warns about the id).
  if (*id < 0 || static_cast<uint64_t>(*id) >= values.size()) return {};
  return std::string(values.string_at(static_cast<size_t>(*id)));
}

std::unique_ptr<ChatTemplate> load_gguf(const std::string& path) {
  GgufFile gguf = GgufFile::open(path);
  auto source = gguf.get_string("tokenizer.chat_template");
  if (!source) return nullptr;
  // llama.cpp-family converters store add_bos_token; a template that prints bos_token expects it
  return parse_named(*source, gguf_token(gguf, "tokenizer.ggml.bos_token_id"),
                     gguf_token(gguf, "tokenizer.ggml.eos_token_id"), path + " tokenizer.chat_template");
}

std::unique_ptr<ChatTemplate> load_folder(const fs::path& folder, const fs::path* template_file) {
  std::error_code ec;
  nlohmann::json config = nlohmann::json::object();
  const fs::path config_path = folder / "tokenizer_config.json";
  if (fs::is_regular_file(config_path, ec)) config = read_json_file(config_path);
  if (!config.is_object()) throw Error(ErrorKind::corrupt_file, config_path.string() + ": not a JSON object");
  std::string bos = special_token(config, "bos_token");
  std::string eos = special_token(config, "eos_token");

  // transformers prefers chat_template.jinja (its current save format) over the older places
  const fs::path jinja_path = template_file ? *template_file : folder / "chat_template.jinja";
  if (fs::is_regular_file(jinja_path, ec))
    return parse_named(read_text_file(jinja_path), bos, eos, jinja_path.string());
  const fs::path json_path = folder / "chat_template.json";
  if (fs::is_regular_file(json_path, ec)) {
    nlohmann::json wrapper = read_json_file(json_path);
    if (wrapper.is_object() && wrapper.contains("chat_template"))
      if (auto source = template_from_config(wrapper["chat_template"], json_path))
        return parse_named(*source, bos, eos, json_path.string());
  }
  if (config.contains("chat_template"))
    if (auto source = template_from_config(config["chat_template"], config_path))
      return parse_named(*source, bos, eos, config_path.string() + " chat_template");
  // a folder holding only a GGUF: its embedded template
  std::vector<fs::path> ggufs;
  for (const auto& entry : fs::directory_iterator(folder, ec))
    if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
  std::sort(ggufs.begin(), ggufs.end());
  if (!ggufs.empty()) return load_gguf(ggufs.front().string());
  return nullptr;
}

}  // namespace

std::unique_ptr<ChatTemplate> ChatTemplate::parse(std::string_view source, std::string bos_token,
                                                  std::string eos_token) {
  jinja::LexerOptions options;
  options.trim_blocks = true;
  options.lstrip_blocks = true;
  return std::make_unique<JinjaChatTemplate>(jinja::Template::parse(source, options), std::move(bos_token),
                                             std::move(eos_token));
}

std::unique_ptr<ChatTemplate> ChatTemplate::load(const std::string& model_path) {
  const fs::path path(model_path);
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_folder(path, nullptr);
  if (!fs::is_regular_file(path, ec))
    throw Error(ErrorKind::io, model_path + ": no such model file or folder");
  if (path.extension() == ".gguf" || has_gguf_magic(path.string())) return load_gguf(model_path);
  if (path.extension() == ".jinja") return load_folder(path.parent_path(), &path);
  return load_folder(path.has_parent_path() ? path.parent_path() : fs::path("."),
                     nullptr);  // e.g. tokenizer_config.json
}

}  // namespace tandem
