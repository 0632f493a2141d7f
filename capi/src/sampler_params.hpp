#pragma once
// tandem_sampler_params → tandem::SamplingParams, shared by samplers and generate.
#include "tandem.h"
#include "tandem/text/sampler.hpp"

namespace tandem::capi {

// NULL gives the defaults (greedy). Throws Error(invalid_argument) for a bad struct_size or value.
SamplingParams to_sampling_params(const tandem_sampler_params* given);

}  // namespace tandem::capi
