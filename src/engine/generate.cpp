#include "tandem/engine/generate.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Finds stop strings in the streamed text. Text that could still grow into a stop string is held
// back, so a stop string never reaches the caller even when it spans several tokens.
class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops) : stops_(stops) {
    for (const auto& s : stops_)
      if (s.empty()) throw Error(ErrorKind::invalid_argument, "generate: empty stop string");
  }

  // Position of the earliest stop string in `text`, or npos.
  size_t find(std::string_view text) const {
    size_t first = std::string_view::npos;
    for (const auto& s : stops_) first = std::min(first, text.find(s));
    return first;
  }

  // Length of the longest suffix of `text` that is a proper prefix of some stop string.
  size_t held_back(std::string_view text) const {
    size_t longest = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(text.size(), s.size() - 1); k > longest; --k)
        if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
          longest = k;
          break;
        }
    return longest;
  }

 private:
  const std::vector<std::string>& stops_;
};

bool is_cancel(const Error& e) { return e.kind() == ErrorKind::cancelled; }

}  // namespace

const char* stop_reason_name(StopReason reason) noexcept {
  switch (reason) {
    case StopReason::max_tokens:
      return "max_tokens";
    case StopReason::eos:
      return "eos";
    case StopReason::stop_string:
      return "stop_string";
    case StopReason::callback:
      return "callback";
    case StopReason::cancelled:
      return "cancelled";
    case StopReason::context_full:
      return "context_full";
  }
  return "unknown";
}

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prefilled_tokens) / prefill_seconds : 0.0;
}

double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 && decoded_tokens > 0 ? static_cast<double>(decoded_tokens) / decode_seconds : 0.0;
}

std::vector<int32_t> eos_ids_for(const ModelConfig& config, const Tokenizer* tokenizer) {
  std::vector<int32_t> ids;
  const auto add = [&](int64_t id) {
    if (id < 0 || id > INT32_MAX) return;
    if (std::find(ids.begin(), ids.end(), static_cast<int32_t>(id)) == ids.end())
      ids.push_back(static_cast<int32_t>(id));
  };
  for (int64_t id : config.eos_token_ids) add(id);
  if (tokenizer) add(tokenizer->eos_id());
  return ids;
}

GenerateResult generate(Session& session, const Tokenizer* tokenizer, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const TokenCallback& on_token) {
  if (prompt.empty()) throw Error(ErrorKind::invalid_argument, "generate: empty prompt");
  if (!tokenizer && !options.stop_strings.empty())
    throw Error(ErrorKind::invalid_argument,
                "generate: stop strings need a tokenizer, and the model has none");
  Sampler sampler(options.sampling);
  const StopMatcher stops(options.stop_strings);

  GenerateResult result;
  result.stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  const auto cancelled = [&] { return options.cancel && options.cancel->load(std::memory_order_relaxed); };
  if (cancelled()) {
    result.stop = StopReason::cancelled;
    return result;
  }

  // Reuse the longest common prefix of what the session holds and the prompt; at least one prompt
  // token is prefilled so its logits exist.
  const auto& held = session.tokens();
  const size_t common = static_cast<size_t>(
      std::mismatch(held.begin(), held.end(), prompt.begin(), prompt.end()).first - held.begin());
  const size_t reused = std::min(common, prompt.size() - 1);
  if (reused == 0 && session.position() != 0)
    session.reset();
  else if (static_cast<int64_t>(reused) != session.position())
    session.truncate(static_cast<int64_t>(reused));
  const auto suffix = prompt.subspan(reused);
  result.stats.prefilled_tokens = static_cast<int64_t>(suffix.size());

  const auto prefill_start = Clock::now();
  try {
    session.prefill(suffix);
  } catch (const Error& e) {
    if (!is_cancel(e)) throw;
    session.reset();
    result.stop = StopReason::cancelled;
    return result;
  }
  result.stats.prefill_seconds = seconds_since(prefill_start);
  result.stats.cached_prompt_tokens = session.cached_prompt_tokens();
  result.stats.prefilled_tokens -= result.stats.cached_prompt_tokens;

  std::optional<IncrementalDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, options.skip_special_text);
  std::string pending;  // decoded text not yet handed to the caller
  bool keep_going = true;
  const auto emit = [&](int32_t id, std::string_view text) {
    result.text += text;
    if (on_token && !on_token(id, text)) keep_going = false;
  };

  const auto decode_start = Clock::now();
  bool stopped_by_string = false;
  for (int64_t n = 0; options.max_new_tokens < 0 || n < options.max_new_tokens; ++n) {
    if (cancelled()) {
      result.stop = StopReason::cancelled;
      break;
    }
    const int32_t id = sampler.sample(session.logits(), session.tokens());
    result.ids.push_back(id);
    if (std::find(options.eos_ids.begin(), options.eos_ids.end(), id) != options.eos_ids.end()) {
      result.stop = StopReason::eos;
      break;
    }
    if (decoder) pending += decoder->push(id);
    if (const size_t at = stops.find(pending); at != std::string_view::npos) {
      emit(id, std::string_view(pending).substr(0, at));
      pending.clear();
      stopped_by_string = true;
      result.stop = StopReason::stop_string;
      break;
    }
    const size_t ready = pending.size() - stops.held_back(pending);
    emit(id, std::string_view(pending).substr(0, ready));
    pending.erase(0, ready);
    if (!keep_going) {
      result.stop = StopReason::callback;
      break;
    }
    if (options.max_new_tokens >= 0 && n + 1 == options.max_new_tokens) break;  // its logits are not needed
    try {
      session.decode(id);
      ++result.stats.decoded_tokens;
    } catch (const Error& e) {
      if (is_cancel(e)) {
        session.reset();
        result.stop = StopReason::cancelled;
        break;
      }
      if (e.kind() != ErrorKind::out_of_range) throw;
      result.stop = StopReason::context_full;
      break;
    }
  }
  result.stats.generated_tokens = static_cast<int64_t>(result.ids.size());
  result.stats.decode_seconds = seconds_since(decode_start);

  if (decoder && !stopped_by_string) {
    pending += decoder->flush();
    if (const size_t at = stops.find(pending); at != std::string_view::npos) {
      pending.resize(at);
      result.stop = StopReason::stop_string;
    }
    if (!pending.empty()) emit(-1, pending);
  }
  return result;
}

}  // namespace tandem
