// DeepSeek-V2 / V2-Lite: MLA, softmax routing, greedy or group-limited top-k.
#include "model/architectures/deepseek_common.hpp"
#include "model/config_keys.hpp"

namespace tandem::model {
namespace {

void read_hf(const HfKeys& keys, ModelConfig& c) { read_deepseek_hf(keys, c, "greedy"); }
bool accepts_gguf(const GgufKeys& keys) { return keys.get_int("expert_gating_func").value_or(1) != 2; }

}  // namespace

ArchitectureDescription describe_deepseek_v2() {
  ArchitectureDescription d{Architecture::deepseek_v2, "deepseek_v2", "deepseek2", read_hf, read_deepseek_gguf,
                            accepts_gguf, common_hub_names(), common_gguf_names()};
  add_deepseek_names(d);
  return d;
}

}  // namespace tandem::model
