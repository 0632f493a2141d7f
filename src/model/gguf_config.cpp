// ModelConfig from GGUF metadata: "<arch>.*" keys common to the families here, then the
// family's own keys from its description.
#include <cmath>

#include "model/architecture.hpp"
#include "model/config_keys.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/model/config_readers.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem::model {

std::string GgufKeys::source() const { return file_.files().empty() ? std::string("GGUF") : file_.files().front(); }

std::optional<int64_t> GgufKeys::get_int(const std::string& key) const {
  const GgufValue* v = file_.find(prefix_ + key);
  if (!v) return std::nullopt;
  return v->as_int();
}

std::optional<double> GgufKeys::get_float(const std::string& key) const {
  const GgufValue* v = file_.find(prefix_ + key);
  if (!v) return std::nullopt;
  const double d = v->as_float();
  if (!std::isfinite(d)) throw Error(ErrorKind::corrupt_file, source() + ": " + prefix_ + key + " is not finite");
  return d;
}

std::optional<bool> GgufKeys::get_bool(const std::string& key) const {
  const GgufValue* v = file_.find(prefix_ + key);
  if (!v) return std::nullopt;
  return v->as_bool();
}

std::optional<std::string> GgufKeys::get_string(const std::string& key) const {
  const GgufValue* v = file_.find(prefix_ + key);
  if (!v) return std::nullopt;
  return v->as_string();
}

int64_t GgufKeys::require_int(const std::string& key) const {
  auto v = get_int(key);
  if (!v) throw Error(ErrorKind::corrupt_file, source() + ": required metadata key " + prefix_ + key + " is missing");
  return *v;
}

bool GgufKeys::has_tensor(const std::string& name) const { return file_.tensors().find(name) != nullptr; }

std::vector<int64_t> GgufKeys::layers_without(const std::string& suffix, int64_t num_layers) const {
  std::vector<int64_t> layers;
  for (int64_t layer = 0; layer < num_layers && layer < 4096; ++layer)
    if (!has_tensor("blk." + std::to_string(layer) + "." + suffix)) layers.push_back(layer);
  return layers;
}

namespace {

void read_common(const GgufKeys& keys, const GgufFile& file, ModelConfig& c, std::vector<std::string>& warnings) {
  c.num_layers = keys.require_int("block_count");
  c.hidden_size = keys.require_int("embedding_length");
  c.max_position_embeddings = keys.get_int("context_length").value_or(4096);
  c.num_heads = keys.require_int("attention.head_count");
  c.num_kv_heads = keys.get_int("attention.head_count_kv").value_or(c.num_heads);
  c.head_dim = keys.get_int("attention.key_length").value_or(c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.rms_norm_eps = keys.get_float("attention.layer_norm_rms_epsilon").value_or(1e-6);
  if (auto theta = keys.get_float("rope.freq_base")) {
    c.rope_theta = *theta;
  } else {
    c.rope_theta = 10000.0;
    warnings.push_back(keys.prefix() + "rope.freq_base is missing: using 10000 as llama.cpp does (config.json "
                                       "may say otherwise; override with rope_theta)");
  }
  if (auto type = keys.get_string("rope.scaling.type")) {
    RopeScaling& rs = c.rope_scaling;
    if (*type == "yarn") {
      rs.type = RopeScalingType::yarn;
    } else if (*type == "linear") {
      rs.type = RopeScalingType::linear;
    } else if (*type != "none") {
      throw Error(ErrorKind::unsupported, keys.source() + ": " + keys.prefix() + "rope.scaling.type \"" + *type +
                                              "\" is not supported (none, linear, yarn)");
    }
    rs.factor = keys.get_float("rope.scaling.factor").value_or(1.0);
    rs.original_max_position_embeddings =
        keys.get_int("rope.scaling.original_context_length").value_or(c.max_position_embeddings);
    rs.beta_fast = keys.get_float("rope.scaling.yarn_beta_fast").value_or(32.0);
    rs.beta_slow = keys.get_float("rope.scaling.yarn_beta_slow").value_or(1.0);
  }
  c.intermediate_size = keys.get_int("feed_forward_length").value_or(0);
  c.moe_intermediate_size = keys.get_int("expert_feed_forward_length").value_or(0);
  c.num_experts = keys.get_int("expert_count").value_or(0);
  c.num_experts_per_tok = keys.get_int("expert_used_count").value_or(0);

  if (auto vocab = keys.get_int("vocab_size")) {
    c.vocab_size = *vocab;
  } else if (const GgufValue* tokens = file.find("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(tokens->as_array().values.size());
  } else if (const TensorEntry* embd = file.tensors().find("token_embd.weight")) {
    c.vocab_size = embd->view.shape[0];
  }
  c.tie_word_embeddings = file.tensors().find("output.weight") == nullptr;
  c.bos_token_id = file.get_int("tokenizer.ggml.bos_token_id").value_or(-1);
  if (auto eos = file.get_int("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {*eos};
  if (auto eot = file.get_int("tokenizer.ggml.eot_token_id"); eot && (c.eos_token_ids.empty() || c.eos_token_ids[0] != *eot))
    c.eos_token_ids.push_back(*eot);
}

const ArchitectureDescription& find_gguf_architecture(const GgufFile& file, const std::string& source) {
  const std::string name = file.architecture();
  std::string known;
  for (const auto& arch : architecture_registry()) {
    if (arch.gguf_name != name) continue;
    if (!arch.accepts_gguf || arch.accepts_gguf(GgufKeys(file, name + "."))) return arch;
  }
  for (const auto& arch : architecture_registry()) {
    if (known.find(arch.gguf_name) != std::string::npos) continue;
    if (!known.empty()) known += ", ";
    known += arch.gguf_name;
  }
  throw Error(ErrorKind::unsupported, source + ": GGUF architecture \"" + name +
                                          "\" is not supported (supported: " + known +
                                          "; llama only with experts, as Mixtral)");
}

}  // namespace
}  // namespace tandem::model

namespace tandem {

ModelConfig config_from_gguf(const GgufFile& gguf, const ModelOverrides& overrides, std::vector<std::string>& warnings) {
  const std::string source = gguf.files().empty() ? std::string("GGUF") : gguf.files().front();
  const model::ArchitectureDescription& arch = model::find_gguf_architecture(gguf, source);
  const model::GgufKeys keys(gguf, gguf.architecture() + ".");
  ModelConfig c;
  c.architecture = arch.id;
  c.architecture_name = std::string(arch.hf_model_type);
  model::read_common(keys, gguf, c, warnings);
  arch.read_gguf(keys, c, warnings);
  if (overrides.n_group || overrides.topk_group)
    std::erase_if(warnings, [](const std::string& w) { return w.find("expert_group_count") != std::string::npos; });
  if (overrides.n_group) c.n_group = *overrides.n_group;
  if (overrides.topk_group) c.topk_group = *overrides.topk_group;
  if (overrides.rope_theta) {
    c.rope_theta = *overrides.rope_theta;
    std::erase_if(warnings, [](const std::string& w) { return w.find("rope.freq_base") != std::string::npos; });
  }
  validate_model_config(c, source);
  return c;
}

}  // namespace tandem
