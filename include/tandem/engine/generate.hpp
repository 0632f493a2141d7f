#pragma once
// The generation loop over a Session: prompt ids → prefill → sample → decode → … until EOS, a stop
// string, max_new_tokens, the callback or cancellation says stop.
//
// Prompt reuse: the session keeps the longest common prefix of what it holds and `prompt` (the
// previous turn of a chat, or an edited prompt that diverges mid-way) and drops the rest
// (Session::truncate); only the remainder is prefilled, and always at least the prompt's last
// token, whose logits start sampling. With nothing in common the session is reset.
// The last sampled token is not decoded into the session (its logits would never be used), so after
// a reply the session holds prompt + reply minus its last token; the next prompt's suffix covers it.
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/text/sampler.hpp"

namespace tandem {

class Session;
class Tokenizer;
struct ModelConfig;

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 256;  // < 0: until EOS, a stop, or the session's context limit
  // Text-level stops, matched on the detokenised stream; the stop string itself is not emitted.
  // Needs a tokenizer.
  std::vector<std::string> stop_strings;
  // Ids that end generation when sampled; they are kept in GenerateResult::ids (as HF generate
  // returns them) but produce no text. See eos_ids_for().
  std::vector<int32_t> eos_ids;
  bool skip_special_text = false;             // HF skip_special_tokens for the streamed text
  const std::atomic<bool>* cancel = nullptr;  // checked before each token
};

enum class StopReason { max_tokens, eos, stop_string, callback, cancelled, context_full };
const char* stop_reason_name(StopReason reason) noexcept;

struct GenerateStats {
  int64_t prompt_tokens = 0;     // the whole prompt
  int64_t prefilled_tokens = 0;  // the part of it actually run (less when a prefix was reused)
  int64_t generated_tokens = 0;  // sampled ids, EOS included
  int64_t decoded_tokens = 0;    // one-token forward passes run (the first id comes from prefill)
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the end of prefill to the last token
  int64_t cached_prompt_tokens = 0;  // prompt tokens adopted from the prefix cache (not prefilled)
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // decoded_tokens / decode_seconds; 0 when none ran
};

struct GenerateResult {
  std::vector<int32_t> ids;  // the new ids
  std::string text;          // what was emitted through the callback, concatenated
  StopReason stop = StopReason::max_tokens;
  GenerateStats stats;
};

// Called once per sampled token with the text that became final with it (maybe empty: incomplete
// UTF-8 or a possible stop-string prefix is held back), and once more with id -1 for the text
// flushed at the end. Returning false stops generation after this token.
using TokenCallback = std::function<bool(int32_t id, std::string_view text)>;

// `tokenizer` may be null: no text is produced and stop_strings must be empty.
// Errors from the session (context limit, …) propagate; Error(cancelled) from a session becomes
// StopReason::cancelled after resetting the session (its cache may be half-written).
GenerateResult generate(Session& session, const Tokenizer* tokenizer, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const TokenCallback& on_token = {});

// EOS ids as HF generate uses them (config.json / generation_config.json / GGUF, already in
// ModelConfig) plus, when `tokenizer` is given, the tokenizer's EOS token; deduplicated.
std::vector<int32_t> eos_ids_for(const ModelConfig& config, const Tokenizer* tokenizer);

}  // namespace tandem
