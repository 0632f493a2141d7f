#pragma once
// The body of POST /v1/chat/completions and /v1/completions, checked field by field: wrong types
// and values out of range are ApiError(400) naming the field; fields Tandem does not know are
// ignored (as OpenAI does). llama-server's extensions are accepted where they are common
// (top_k, min_p, repeat_penalty, ignore_eos, chat_template_kwargs, reasoning_format).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tandem/text/sampler.hpp"

namespace tandem::server {

enum class Endpoint { chat, completion };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::chat;
  std::string model;                // "" when the client sent none
  nlohmann::ordered_json messages;  // chat: [{role, content (string or null), ...}]
  nlohmann::ordered_json tools;     // chat: null or an array
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();  // chat_template_kwargs
  std::string prompt_text;          // completion: the prompt as text
  std::vector<int32_t> prompt_ids;  // completion: the prompt as token ids (when sent as numbers)
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  std::optional<int64_t> max_tokens;  // max_completion_tokens or max_tokens
  SamplingParams sampling;            // temperature 1, top_p 1 unless given (OpenAI's defaults)
  bool seed_given = false;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  std::optional<bool> reasoning_inline;  // reasoning_format: "none" → true; "deepseek"/"auto" → false
};

struct RequestLimits {
  int64_t max_tokens = 1 << 20;  // largest max_tokens accepted
  size_t max_stop_strings = 16;
  size_t max_messages = 4096;
};

// Throws ApiError(400) naming the first bad field.
CompletionRequest parse_completion_request(const nlohmann::ordered_json& body, Endpoint endpoint,
                                           const RequestLimits& limits);

// Chat message content as text: a string, null (""), or an array of {"type": "text", "text"} parts.
std::string message_text(const nlohmann::ordered_json& content, const std::string& where);

}  // namespace tandem::server
