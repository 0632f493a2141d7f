// `tandem template -m PATH --messages M.json [--tools T.json] [--kwargs JSON] [--generation-prompt]`:
// prints the model's chat template rendered over the conversation, exactly, with nothing added
// (external checks compare the bytes with HF apply_chat_template).
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/command.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"

namespace tandem::cli {
namespace {

struct TemplateFlags {
  std::string model_path;
  std::string messages_path;
  std::string tools_path;
  std::string kwargs;
  bool generation_prompt = false;
};

// ordered_json keeps each object's keys in file order: tojson must print them that way.
nlohmann::ordered_json parse_json(const std::string& text, const std::string& origin) {
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::invalid_argument, origin + ": not valid JSON: " + e.what());
  }
}

nlohmann::ordered_json read_json(const std::string& path) {
  return parse_json(read_file_bytes(path), path);
}

int template_command(const TemplateFlags& flags) {
  auto chat_template = ChatTemplate::load(flags.model_path);
  if (!chat_template)
    throw Error(ErrorKind::unsupported, flags.model_path + ": the model ships no chat template");

  nlohmann::ordered_json messages = read_json(flags.messages_path);
  // Moved, not copied: nlohmann's copy recurses, and the document may be nested arbitrarily deep
  // (the template layer refuses depth past its limit with an error).
  if (messages.is_object() && messages.contains("messages")) {
    nlohmann::ordered_json inner = std::move(messages["messages"]);
    messages = std::move(inner);
  }
  if (!messages.is_array())
    throw Error(ErrorKind::invalid_argument, flags.messages_path + ": expected a JSON array of messages");
  nlohmann::ordered_json tools, kwargs;
  ChatRequest request;
  request.ordered_messages = &messages;
  if (!flags.tools_path.empty()) {
    tools = read_json(flags.tools_path);
    if (tools.is_object() && tools.contains("tools")) {
      nlohmann::ordered_json inner = std::move(tools["tools"]);
      tools = std::move(inner);
    }
    if (!tools.is_array())
      throw Error(ErrorKind::invalid_argument, flags.tools_path + ": expected a JSON array of tool schemas");
    request.ordered_tools = &tools;
  }
  if (!flags.kwargs.empty()) {
    kwargs = parse_json(flags.kwargs, "--kwargs");
    if (!kwargs.is_object()) throw Error(ErrorKind::invalid_argument, "--kwargs: expected a JSON object");
    request.ordered_extra = &kwargs;
  }
  request.add_generation_prompt = flags.generation_prompt;

  const std::string rendered = chat_template->render(request);
  if (std::fwrite(rendered.data(), 1, rendered.size(), stdout) != rendered.size() || std::fflush(stdout) != 0)
    throw Error(ErrorKind::io, "cannot write to stdout");
  return 0;
}

const RegisterCommand registered{
    {"template", "render a conversation through the model's chat template", [](CLI::App& sub) -> CommandRun {
       auto flags = std::make_shared<TemplateFlags>();
       sub.add_option("-m,--model", flags->model_path, "model folder, tokenizer folder or GGUF")->required();
       sub.add_option("--messages", flags->messages_path, "JSON file: an array of messages")->required();
       sub.add_option("--tools", flags->tools_path, "JSON file: an array of tool schemas");
       sub.add_option("--kwargs", flags->kwargs,
                      "JSON object of extra template variables, e.g. {\"enable_thinking\": false}");
       sub.add_flag("--generation-prompt", flags->generation_prompt,
                    "end with the assistant turn's opening (add_generation_prompt)");
       return [flags] { return template_command(*flags); };
     }}};

}  // namespace
}  // namespace tandem::cli
