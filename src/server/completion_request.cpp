#include "tandem/server/completion_request.hpp"

#include <fmt/format.h>

#include <cmath>

#include "tandem/server/api_error.hpp"

namespace tandem::server {

namespace {

using ojson = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

const ojson* field(const ojson& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const ojson& body, const char* name, double lo, double hi, double fallback) {
  const ojson* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) bad(name, fmt::format("'{}' must be a number", name));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(name, fmt::format("'{}' must be within [{}, {}], not {}", name, lo, hi, x));
  return x;
}

std::optional<int64_t> integer(const ojson& body, const char* name, int64_t lo, int64_t hi) {
  const ojson* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::floor(d) != d) bad(name, fmt::format("'{}' must be an integer", name));
  } else if (!v->is_number_integer()) {
    bad(name, fmt::format("'{}' must be an integer", name));
  }
  const double x = v->get<double>();
  if (x < static_cast<double>(lo) || x > static_cast<double>(hi))
    bad(name, fmt::format("'{}' must be within [{}, {}], not {}", name, lo, hi, v->dump()));
  return v->is_number_unsigned() ? static_cast<int64_t>(v->get<uint64_t>()) : v->get<int64_t>();
}

bool boolean(const ojson& body, const char* name, bool fallback) {
  const ojson* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) bad(name, fmt::format("'{}' must be a boolean", name));
  return v->get<bool>();
}

void parse_messages(const ojson& body, CompletionRequest& r, const RequestLimits& limits) {
  const ojson* messages = field(body, "messages");
  if (!messages) bad("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) bad("messages", "'messages' must be a non-empty array");
  if (messages->size() > limits.max_messages)
    bad("messages", fmt::format("'messages' has {} entries; at most {} are accepted", messages->size(),
                                limits.max_messages));
  r.messages = ojson::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const ojson& m = (*messages)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad(where, fmt::format("'{}' must be an object", where));
    const ojson* role = field(m, "role");
    if (!role || !role->is_string()) bad(where + ".role", fmt::format("'{}.role' must be a string", where));
    const std::string r_name = role->get<std::string>();
    if (r_name != "system" && r_name != "user" && r_name != "assistant" && r_name != "tool" &&
        r_name != "developer")
      bad(where + ".role",
          fmt::format("'{}.role' must be system, developer, user, assistant or tool, not '{}'", where,
                      r_name));
    ojson out = m;
    if (r_name == "developer") out["role"] = "system";
    const auto content = m.find("content");
    const bool has_tool_calls =
        m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty();
    if (content == m.end() || content->is_null()) {
      if (r_name != "assistant" || !has_tool_calls)
        bad(where + ".content", fmt::format("'{}.content' is required", where));
      out["content"] = nullptr;
    } else {
      out["content"] = message_text(*content, where + ".content");
    }
    if (const auto calls = m.find("tool_calls"); calls != m.end() && !calls->is_null()) {
      if (!calls->is_array())
        bad(where + ".tool_calls", fmt::format("'{}.tool_calls' must be an array", where));
      for (const auto& call : *calls) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object() ||
            !call["function"].contains("name") || !call["function"]["name"].is_string())
          bad(where + ".tool_calls", fmt::format("'{}.tool_calls' entries need function.name", where));
      }
      // Templates read arguments as text (DeepSeek) or iterate them as a mapping (Qwen3): the
      // OpenAI wire form is a JSON string; an object is passed on as is.
      ojson fixed = ojson::array();
      for (auto call : *calls) {
        if (!call.contains("type")) call["type"] = "function";
        auto& args = call["function"]["arguments"];
        if (args.is_null()) args = "{}";
        fixed.push_back(call);
      }
      out["tool_calls"] = fixed;
    }
    r.messages.push_back(std::move(out));
  }
  if (const ojson* tools = field(body, "tools")) {
    if (!tools->is_array()) bad("tools", "'tools' must be an array");
    for (size_t i = 0; i < tools->size(); ++i)
      if (!(*tools)[i].is_object())
        bad(fmt::format("tools[{}]", i), fmt::format("'tools[{}]' must be an object", i));
    if (!tools->empty()) r.tools = *tools;
  }
  if (const ojson* choice = field(body, "tool_choice"); choice && choice->is_string() && *choice == "none")
    r.tools = nullptr;
  if (const ojson* kwargs = field(body, "chat_template_kwargs")) {
    if (!kwargs->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    r.template_kwargs = *kwargs;
  }
}

void parse_prompt(const ojson& body, CompletionRequest& r) {
  const ojson* prompt = field(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    r.prompt_text = prompt->get<std::string>();
    return;
  }
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    r.prompt_text = (*prompt)[0].get<std::string>();
    return;
  }
  if (prompt->is_array() && !prompt->empty()) {
    for (const auto& id : *prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        bad("prompt", "'prompt' must be a string, one string in an array, or an array of token ids");
      r.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    return;
  }
  bad("prompt", "'prompt' must be a string, one string in an array, or an array of token ids");
}

}  // namespace

std::string message_text(const ojson& content, const std::string& where) {
  if (content.is_null()) return {};
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string text;
    for (const auto& part : content) {
      if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
          !part["text"].is_string())
        bad(where,
            fmt::format("'{}' parts must be {{\"type\": \"text\", \"text\": ...}} (only text is supported)",
                        where));
      text += part["text"].get<std::string>();
    }
    return text;
  }
  bad(where, fmt::format("'{}' must be a string or an array of text parts", where));
}

CompletionRequest parse_completion_request(const ojson& body, Endpoint endpoint,
                                           const RequestLimits& limits) {
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  CompletionRequest r;
  r.endpoint = endpoint;
  if (const ojson* model = field(body, "model")) {
    if (!model->is_string()) bad("model", "'model' must be a string");
    r.model = model->get<std::string>();
  }
  if (endpoint == Endpoint::chat)
    parse_messages(body, r, limits);
  else
    parse_prompt(body, r);
  r.stream = boolean(body, "stream", false);
  if (const ojson* options = field(body, "stream_options")) {
    if (!options->is_object()) bad("stream_options", "'stream_options' must be an object");
    r.include_usage = boolean(*options, "include_usage", false);
  }
  r.max_tokens = integer(body, "max_completion_tokens", 1, limits.max_tokens);
  if (!r.max_tokens) r.max_tokens = integer(body, "max_tokens", 1, limits.max_tokens);
  if (const auto n = integer(body, "n", 1, 128); n && *n != 1) bad("n", "only n = 1 is supported");
  r.sampling.temperature = static_cast<float>(number(body, "temperature", 0, 2, 1.0));
  r.sampling.top_p = static_cast<float>(number(body, "top_p", 0, 1, 1.0));
  if (r.sampling.top_p == 0) r.sampling.top_p = 1e-6f;  // OpenAI allows 0: only the best token
  r.sampling.top_k = static_cast<int32_t>(integer(body, "top_k", 0, 1 << 30).value_or(0));
  r.sampling.min_p = static_cast<float>(number(body, "min_p", 0, 1, 0.0));
  r.sampling.frequency_penalty = static_cast<float>(number(body, "frequency_penalty", -2, 2, 0.0));
  r.sampling.presence_penalty = static_cast<float>(number(body, "presence_penalty", -2, 2, 0.0));
  r.sampling.repetition_penalty = static_cast<float>(number(body, "repeat_penalty", 1e-3, 100, 1.0));
  if (const auto seed = integer(body, "seed", INT64_MIN, INT64_MAX)) {
    r.sampling.seed = static_cast<uint64_t>(*seed);
    r.seed_given = true;
  }
  if (const ojson* stop = field(body, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const auto& s : *stop) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings");
    }
    if (r.stop.size() > limits.max_stop_strings)
      bad("stop", fmt::format("'stop' has {} strings; at most {} are accepted", r.stop.size(),
                              limits.max_stop_strings));
    std::erase_if(r.stop, [](const std::string& s) { return s.empty(); });
  }
  r.ignore_eos = boolean(body, "ignore_eos", false);
  if (const ojson* format = field(body, "reasoning_format")) {
    if (!format->is_string()) bad("reasoning_format", "'reasoning_format' must be a string");
    const std::string f = format->get<std::string>();
    if (f == "none")
      r.reasoning_inline = true;
    else if (f == "deepseek" || f == "auto" || f == "deepseek-legacy")
      r.reasoning_inline = false;
    else
      bad("reasoning_format", fmt::format("'reasoning_format' must be none, auto or deepseek, not '{}'", f));
  }
  return r;
}

}  // namespace tandem::server
