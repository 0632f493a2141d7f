// libFuzzer target: any bytes as the JSON of `--messages`, `--tools` and `--kwargs` rendered
// through a template that walks them the way real chat templates do (loops, attribute access,
// tojson, string filters) must render or throw tandem::Error. Deeply nested documents are the
// point: the JSON → template value conversion must refuse them, not overflow the stack.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>

#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"

namespace {

constexpr std::string_view kTemplate =
    "{%- if tools %}{{ tools | tojson }}{% for t in tools %}{{ t.function.name if t.function is defined }}"
    "{% endfor %}{% endif -%}"
    "{%- for m in messages %}<|{{ m.role | default('user') }}|>"
    "{%- if m.content is string %}{{ m.content | trim }}{% elif m.content is iterable %}"
    "{% for part in m.content %}{{ part.text if part is mapping else part }}{% endfor %}{% endif %}"
    "{%- for call in m.tool_calls | default([]) %}{{ call | tojson }}{% endfor %}"
    "{%- endfor %}{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tmpl = tandem::ChatTemplate::parse(kTemplate);
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const nlohmann::ordered_json doc = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  const nlohmann::ordered_json empty_array = nlohmann::ordered_json::array();
  const nlohmann::ordered_json empty_object = nlohmann::ordered_json::object();
  // The same document in each of the three places a user can pass JSON.
  for (int where = 0; where < 3; ++where) {
    tandem::ChatRequest request;
    request.ordered_messages = where == 0 ? &doc : &empty_array;
    request.ordered_tools = where == 1 ? &doc : &empty_array;
    request.ordered_extra = where == 2 && doc.is_object() ? &doc : &empty_object;
    request.add_generation_prompt = true;
    request.max_steps = 200'000;
    try {
      (void)tmpl->render(request);
    } catch (const tandem::Error&) {
    }
  }
  return 0;
}
