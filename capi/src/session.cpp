// Sessions through the C ABI: prefill, decode, logits, reset, cancel and the generate loop.
#include <algorithm>

#include "c_api_support.hpp"
#include "sampler_params.hpp"
#include "tandem/engine/generate.hpp"

using namespace tandem;
using namespace tandem::capi;

namespace {

const size_t kGenerateParamsV1 = TANDEM_V1_SIZE(tandem_generate_params, user_data);
const size_t kGenerateStatsV1 = TANDEM_V1_SIZE(tandem_generate_stats, decode_seconds);

// Clears the cancel request when a call ends, however it ends: a cancel applies to one call.
struct CancelScope {
  tandem_session& session;
  explicit CancelScope(tandem_session& s) : session(s) {
    if (session.cancel_requested.load()) {
      session.cancel_requested.store(false);
      throw Error(ErrorKind::cancelled, "cancelled by tandem_session_cancel before the call started");
    }
  }
  ~CancelScope() { session.cancel_requested.store(false); }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;
};

tandem_stop_reason to_c(StopReason reason) {
  switch (reason) {
    case StopReason::max_tokens: return TANDEM_STOP_MAX_TOKENS;
    case StopReason::eos: return TANDEM_STOP_EOS;
    case StopReason::stop_string: return TANDEM_STOP_STOP_STRING;
    case StopReason::callback: return TANDEM_STOP_CALLBACK;
    case StopReason::cancelled: return TANDEM_STOP_CANCELLED;
    case StopReason::context_full: return TANDEM_STOP_CONTEXT_FULL;
  }
  return TANDEM_STOP_MAX_TOKENS;
}

std::span<const float> current_logits(const tandem_session* session) {
  const tandem_session& s = require(session, "session");
  if (!s.has_logits) {
    throw Error(ErrorKind::invalid_argument, "the session has no logits yet: run prefill or decode first");
  }
  return s.session->logits();
}

}  // namespace

extern "C" {

tandem_status tandem_session_new(tandem_model* model, tandem_session** out_session) {
  if (out_session != nullptr) *out_session = nullptr;
  return guarded([&] {
    require(out_session, "out_session");
    auto session = std::make_unique<tandem_session>();
    session->model = &require(model, "model");
    session->session = model->engine->new_session();
    *out_session = session.release();
  });
}

void tandem_session_free(tandem_session* session) { delete session; }

tandem_status tandem_session_prefill(tandem_session* session, const int32_t* ids, size_t n_ids) {
  return guarded([&] {
    tandem_session& s = require(session, "session");
    if (ids == nullptr || n_ids == 0) throw Error(ErrorKind::invalid_argument, "ids must be a non-empty array");
    CancelScope scope(s);
    s.has_logits = false;
    s.session->prefill(std::span<const int32_t>(ids, n_ids));
    s.has_logits = true;
  });
}

tandem_status tandem_session_decode(tandem_session* session, int32_t id) {
  return guarded([&] {
    tandem_session& s = require(session, "session");
    CancelScope scope(s);
    s.has_logits = false;
    s.session->decode(id);
    s.has_logits = true;
  });
}

tandem_status tandem_session_logits(const tandem_session* session, const float** out_logits,
                                    size_t* out_count) {
  return guarded([&] {
    require(out_logits, "out_logits");
    require(out_count, "out_count");
    const std::span<const float> logits = current_logits(session);
    *out_logits = logits.data();
    *out_count = logits.size();
  });
}

tandem_status tandem_session_copy_logits(const tandem_session* session, float* out_logits, size_t capacity,
                                         size_t* out_count) {
  return guarded([&] {
    require(out_count, "out_count");
    const std::span<const float> logits = current_logits(session);
    *out_count = logits.size();
    if (logits.size() > capacity) {
      throw StatusError{TANDEM_STATUS_BUFFER_TOO_SMALL,
                        fmt::format("tandem_session_copy_logits: {} logits do not fit in capacity {}",
                                    logits.size(), capacity)};
    }
    std::copy(logits.begin(), logits.end(), &require(out_logits, "out_logits"));
  });
}

tandem_status tandem_session_position(const tandem_session* session, int64_t* out_position) {
  return guarded([&] { require(out_position, "out_position") = require(session, "session").session->position(); });
}

tandem_status tandem_session_reset(tandem_session* session) {
  return guarded([&] {
    tandem_session& s = require(session, "session");
    s.session->reset();
    s.has_logits = false;
  });
}

tandem_status tandem_session_cancel(tandem_session* session) {
  return guarded([&] {
    tandem_session& s = require(session, "session");
    s.cancel_requested.store(true);
    s.session->cancel();
  });
}

tandem_generate_params tandem_generate_default_params(void) {
  tandem_generate_params params{};
  params.struct_size = sizeof(params);
  params.max_new_tokens = 256;
  params.sampling = nullptr;
  params.stop_at_eos = 1;
  params.stop_strings = nullptr;
  params.n_stop_strings = 0;
  params.skip_special_text = 0;
  params.on_token = nullptr;
  params.user_data = nullptr;
  return params;
}

tandem_status tandem_session_generate(tandem_session* session, const int32_t* prompt, size_t n_prompt,
                                      const tandem_generate_params* params, int32_t* out_ids, size_t capacity,
                                      size_t* out_count, tandem_generate_stats* out_stats) {
  if (out_count != nullptr) *out_count = 0;
  tandem_status cancelled_status = TANDEM_STATUS_OK;
  const tandem_status status = guarded([&] {
    tandem_session& s = require(session, "session");
    require(out_count, "out_count");
    if (prompt == nullptr && n_prompt != 0) throw Error(ErrorKind::invalid_argument, "prompt is NULL but n_prompt is not 0");
    if (out_ids == nullptr && capacity != 0) throw Error(ErrorKind::invalid_argument, "out_ids is NULL but capacity is not 0");
    if (out_stats != nullptr) check_struct_size(out_stats->struct_size, kGenerateStatsV1, "tandem_generate_stats");
    const tandem_generate_params p =
        read_params(params, tandem_generate_default_params(), kGenerateParamsV1, "tandem_generate_params");
    if (p.stop_strings == nullptr && p.n_stop_strings != 0) {
      throw Error(ErrorKind::invalid_argument, "tandem_generate_params.stop_strings is NULL but n_stop_strings is not 0");
    }

    GenerateOptions options;
    options.sampling = to_sampling_params(p.sampling);
    const auto room = static_cast<int64_t>(std::min<size_t>(capacity, INT64_MAX));
    options.max_new_tokens = p.max_new_tokens < 0 ? room : std::min(p.max_new_tokens, room);
    for (size_t i = 0; i < p.n_stop_strings; ++i) {
      options.stop_strings.emplace_back(&require(p.stop_strings[i], "a stop string"));
    }
    if (p.stop_at_eos != 0) options.eos_ids = s.model->eos_ids;
    options.skip_special_text = p.skip_special_text != 0;
    options.cancel = &s.cancel_requested;
    TokenCallback on_token;
    if (p.on_token != nullptr) {
      on_token = [&p](int32_t id, std::string_view text) {
        return p.on_token(id, text.data(), text.size(), p.user_data) == 0;
      };
    }

    CancelScope scope(s);
    s.has_logits = false;
    const GenerateResult result = generate(*s.session, s.model->engine->tokenizer(),
                                           std::span<const int32_t>(prompt, n_prompt), options, on_token);
    s.has_logits = result.stop != StopReason::cancelled && s.session->position() > 0;
    std::copy(result.ids.begin(), result.ids.begin() + static_cast<std::ptrdiff_t>(std::min(result.ids.size(), capacity)),
              out_ids);
    *out_count = std::min(result.ids.size(), capacity);
    if (out_stats != nullptr) {
      tandem_generate_stats stats{};
      stats.struct_size = sizeof(stats);
      stats.stop_reason = to_c(result.stop);
      stats.prompt_tokens = result.stats.prompt_tokens;
      stats.prefilled_tokens = result.stats.prefilled_tokens;
      stats.generated_tokens = result.stats.generated_tokens;
      stats.prefill_seconds = result.stats.prefill_seconds;
      stats.decode_seconds = result.stats.decode_seconds;
      stats.cached_prompt_tokens = result.stats.cached_prompt_tokens;
      write_out_struct(out_stats, stats, kGenerateStatsV1, "tandem_generate_stats");
    }
    if (result.stop == StopReason::cancelled) {
      cancelled_status = record_failure(TANDEM_STATUS_CANCELLED,
                                        fmt::format("generation cancelled after {} tokens", result.ids.size()));
    }
  });
  return status != TANDEM_STATUS_OK ? status : cancelled_status;
}

}  // extern "C"
