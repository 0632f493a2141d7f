// libFuzzer target: any bytes as a chat template (before the first "\n#--\n") rendered over any
// bytes as a messages JSON document (after it) must render or throw tandem::Error — never crash,
// overflow the stack, hang (the step budget bounds loops) or throw anything else.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find("\n#--\n");
  const std::string_view source = input.substr(0, cut);
  const std::string_view messages_text = cut == std::string_view::npos ? std::string_view("[]") : input.substr(cut + 5);
  nlohmann::ordered_json messages = nlohmann::ordered_json::parse(messages_text, nullptr, /*allow_exceptions=*/false);
  if (messages.is_discarded()) messages = nlohmann::ordered_json::array();
  try {
    const auto tmpl = tandem::ChatTemplate::parse(source, "<s>", "</s>");
    tandem::ChatRequest request;
    request.ordered_messages = &messages;
    request.add_generation_prompt = true;
    request.max_steps = 200'000;  // libFuzzer's per-input time limit is seconds, not minutes
    (void)tmpl->render(request);
  } catch (const tandem::Error&) {
  }
  return 0;
}
