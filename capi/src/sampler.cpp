// Sampling through the C ABI: a tandem_sampler wraps tandem::Sampler.
#include "c_api_support.hpp"
#include "sampler_params.hpp"

using namespace tandem;
using namespace tandem::capi;

namespace tandem::capi {

SamplingParams to_sampling_params(const tandem_sampler_params* given) {
  const size_t first_version_size = TANDEM_V1_SIZE(tandem_sampler_params, seed);
  const tandem_sampler_params p =
      read_params(given, tandem_sampler_default_params(), first_version_size, "tandem_sampler_params");
  SamplingParams params;
  params.temperature = p.temperature;
  params.top_k = p.top_k;
  params.top_p = p.top_p;
  params.min_p = p.min_p;
  params.repetition_penalty = p.repetition_penalty;
  params.frequency_penalty = p.frequency_penalty;
  params.presence_penalty = p.presence_penalty;
  params.penalty_last_n = p.penalty_last_n;
  params.seed = p.seed;
  validate(params);
  return params;
}

}  // namespace tandem::capi

extern "C" {

tandem_sampler_params tandem_sampler_default_params(void) {
  const SamplingParams defaults;
  tandem_sampler_params params{};
  params.struct_size = sizeof(params);
  params.temperature = defaults.temperature;
  params.top_k = defaults.top_k;
  params.top_p = defaults.top_p;
  params.min_p = defaults.min_p;
  params.repetition_penalty = defaults.repetition_penalty;
  params.frequency_penalty = defaults.frequency_penalty;
  params.presence_penalty = defaults.presence_penalty;
  params.penalty_last_n = defaults.penalty_last_n;
  params.seed = defaults.seed;
  return params;
}

tandem_status tandem_sampler_new(const tandem_sampler_params* params, tandem_sampler** out_sampler) {
  if (out_sampler != nullptr) *out_sampler = nullptr;
  return guarded([&] {
    require(out_sampler, "out_sampler");
    *out_sampler = new tandem_sampler(to_sampling_params(params));
  });
}

void tandem_sampler_free(tandem_sampler* sampler) { delete sampler; }

tandem_status tandem_sampler_sample(tandem_sampler* sampler, const float* logits, size_t n_logits,
                                    const int32_t* history, size_t n_history, int32_t* out_id) {
  return guarded([&] {
    tandem_sampler& s = require(sampler, "sampler");
    require(out_id, "out_id");
    if (logits == nullptr || n_logits == 0) {
      throw Error(ErrorKind::invalid_argument, "logits must be a non-empty array");
    }
    if (history == nullptr && n_history != 0) {
      throw Error(ErrorKind::invalid_argument, "history is NULL but n_history is not 0");
    }
    *out_id = s.sampler.sample(std::span<const float>(logits, n_logits),
                               std::span<const int32_t>(history, n_history));
  });
}

tandem_status tandem_sampler_reseed(tandem_sampler* sampler, uint64_t seed) {
  return guarded([&] { require(sampler, "sampler").sampler.reseed(seed); });
}

}  // extern "C"
