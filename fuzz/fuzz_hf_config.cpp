// libFuzzer target: any text as config.json (and as generation_config.json) must give a validated
// ModelConfig or throw tandem::Error, never crash, hang or throw anything else.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tandem/error.hpp"
#include "tandem/model/config_readers.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    tandem::ModelConfig config = tandem::parse_hf_config(text, "fuzz/config.json");
    // Whatever validation let through must be safe to ask about.
    volatile int64_t sink = config.kv_values_per_token_per_layer();
    for (int64_t layer = 0; layer < config.num_layers; ++layer) sink = sink + config.is_moe_layer(layer);
    tandem::apply_hf_generation_config(text, "fuzz/generation_config.json", config);
  } catch (const tandem::Error&) {
  }
  return 0;
}
