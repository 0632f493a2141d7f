// Tokenizer and chat template calls: tandem_tokenize, tandem_detokenize, tandem_chat_render.
#include <nlohmann/json.hpp>

#include "c_api_support.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
using namespace tandem::capi;

namespace {

const size_t kChatParamsV1 = TANDEM_V1_SIZE(tandem_chat_params, add_generation_prompt);

const Tokenizer& tokenizer_of(const tandem_model* model) {
  const Tokenizer* tokenizer = require(model, "model").engine->tokenizer();
  if (tokenizer == nullptr) {
    throw Error(ErrorKind::unsupported,
                "this model has no tokenizer (none shipped, or loaded with load_tokenizer = 0)");
  }
  return *tokenizer;
}

nlohmann::json parse_json_param(const char* text, const char* name) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::invalid_argument,
                fmt::format("tandem_chat_params.{} is not valid JSON: {}", name, e.what()));
  }
}

}  // namespace

extern "C" {

tandem_status tandem_tokenize(const tandem_model* model, const char* text, size_t text_len,
                              int32_t add_special, int32_t* out_ids, size_t capacity, size_t* out_count) {
  return guarded([&] {
    require(out_count, "out_count");
    if (text == nullptr && text_len != 0) throw Error(ErrorKind::invalid_argument, "text must not be NULL");
    if (out_ids == nullptr && capacity != 0) {
      throw Error(ErrorKind::invalid_argument, "out_ids is NULL but capacity is not 0");
    }
    const std::vector<int32_t> ids =
        tokenizer_of(model).encode(std::string_view(text == nullptr ? "" : text, text_len), add_special != 0);
    *out_count = ids.size();
    if (ids.size() > capacity) {
      throw StatusError{TANDEM_STATUS_BUFFER_TOO_SMALL,
                        fmt::format("tandem_tokenize: {} ids do not fit in capacity {}", ids.size(), capacity)};
    }
    std::copy(ids.begin(), ids.end(), out_ids);
  });
}

tandem_status tandem_detokenize(const tandem_model* model, const int32_t* ids, size_t n_ids,
                                int32_t skip_special, char** out_text, size_t* out_len) {
  if (out_text != nullptr) *out_text = nullptr;
  return guarded([&] {
    require(out_text, "out_text");
    if (ids == nullptr && n_ids != 0) throw Error(ErrorKind::invalid_argument, "ids must not be NULL");
    const Tokenizer& tokenizer = tokenizer_of(model);
    for (size_t i = 0; i < n_ids; ++i) {
      if (ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
        throw Error(ErrorKind::invalid_argument, fmt::format("tandem_detokenize: ids[{}] = {} is outside the "
                                                             "vocabulary [0, {})", i, ids[i], tokenizer.vocab_size()));
      }
    }
    const std::string text = tokenizer.decode(std::vector<int32_t>(ids, ids + n_ids), skip_special != 0);
    *out_text = copy_out_string(text);
    if (out_len != nullptr) *out_len = text.size();
  });
}

tandem_chat_params tandem_chat_default_params(void) {
  tandem_chat_params params{};
  params.struct_size = sizeof(params);
  params.messages_json = nullptr;
  params.tools_json = nullptr;
  params.extra_json = nullptr;
  params.add_generation_prompt = 1;
  return params;
}

tandem_status tandem_chat_render(const tandem_model* model, const tandem_chat_params* params,
                                 char** out_text) {
  if (out_text != nullptr) *out_text = nullptr;
  return guarded([&] {
    require(out_text, "out_text");
    const tandem_chat_params merged = read_params(&require(params, "params"), tandem_chat_default_params(),
                                                  kChatParamsV1, "tandem_chat_params");
    const ChatTemplate* chat_template = require(model, "model").engine->chat_template();
    if (chat_template == nullptr) throw Error(ErrorKind::unsupported, "this model has no chat template");
    const nlohmann::json messages =
        parse_json_param(&require(merged.messages_json, "tandem_chat_params.messages_json"), "messages_json");
    if (!messages.is_array()) {
      throw Error(ErrorKind::invalid_argument, "tandem_chat_params.messages_json must be a JSON array");
    }
    nlohmann::json tools;
    nlohmann::json extra;
    ChatRequest request;
    request.messages = &messages;
    request.add_generation_prompt = merged.add_generation_prompt != 0;
    if (merged.tools_json != nullptr) {
      tools = parse_json_param(merged.tools_json, "tools_json");
      request.tools = &tools;
    }
    if (merged.extra_json != nullptr) {
      extra = parse_json_param(merged.extra_json, "extra_json");
      if (!extra.is_object()) {
        throw Error(ErrorKind::invalid_argument, "tandem_chat_params.extra_json must be a JSON object");
      }
      request.extra = &extra;
    }
    *out_text = copy_out_string(chat_template->render(request));
  });
}

}  // extern "C"
