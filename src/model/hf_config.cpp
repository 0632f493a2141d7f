// ModelConfig from HF config.json: the keys every family shares, in both the hub style
// (rope_theta, rope_scaling, num_experts / n_routed_experts) and the transformers-5 style
// (rope_parameters, num_local_experts); the family's own keys come from its description.
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "model/architecture.hpp"
#include "model/config_keys.hpp"
#include "tandem/error.hpp"
#include "tandem/model/config_readers.hpp"

namespace tandem::model {

namespace {
[[noreturn]] void wrong_type(const std::string& source, const std::string& key, const char* expected) {
  throw Error(ErrorKind::corrupt_file, source + ": key \"" + key + "\" must be " + expected);
}
const nlohmann::json& null_json() {
  static const nlohmann::json null_value;
  return null_value;
}
}  // namespace

const nlohmann::json* HfKeys::find(const std::string& key) const {
  if (!root_.is_object()) return nullptr;
  auto it = root_.find(key);
  if (it == root_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool HfKeys::has(const std::string& key) const { return find(key) != nullptr; }

std::optional<int64_t> HfKeys::get_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      wrong_type(source_, key, "an integer in range");
    return v->get<int64_t>();
  }
  if (v->is_number_float()) {  // 4.0 where 4 was meant
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  wrong_type(source_, key, "an integer");
}

std::optional<double> HfKeys::get_float(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(source_, key, "a number");
  const double d = v->get<double>();
  if (!std::isfinite(d)) wrong_type(source_, key, "a finite number");
  return d;
}

std::optional<bool> HfKeys::get_bool(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(source_, key, "true or false");
  return v->get<bool>();
}

std::optional<std::string> HfKeys::get_string(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(source_, key, "a string");
  return v->get<std::string>();
}

std::vector<int64_t> HfKeys::get_int_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return {};
  if (v->is_number_integer()) return {*get_int(key)};
  if (!v->is_array()) wrong_type(source_, key, "an integer or a list of integers");
  if (v->size() > 65536) wrong_type(source_, key, "a list of at most 65536 integers");
  std::vector<int64_t> out;
  for (const auto& item : *v) {
    if (!item.is_number_integer() || (item.is_number_unsigned() && item.get<uint64_t>() > (uint64_t{1} << 62)))
      wrong_type(source_, key, "a list of integers");
    out.push_back(item.get<int64_t>());
  }
  return out;
}

int64_t HfKeys::require_int(const std::string& key) const {
  auto v = get_int(key);
  if (!v) throw Error(ErrorKind::corrupt_file, source_ + ": required key \"" + key + "\" is missing");
  return *v;
}

HfKeys HfKeys::child(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return HfKeys(null_json(), source_);
  if (!v->is_object()) wrong_type(source_, key, "an object");
  return HfKeys(*v, source_ + " (" + key + ")");
}

namespace {

// rope_scaling (hub) or rope_parameters (transformers 5), which also carries rope_theta.
void read_rope(const HfKeys& keys, ModelConfig& c) {
  const HfKeys params = keys.has("rope_parameters") ? keys.child("rope_parameters") : keys.child("rope_scaling");
  if (auto theta = keys.get_float("rope_theta")) c.rope_theta = *theta;
  if (auto theta = params.get_float("rope_theta")) c.rope_theta = *theta;
  std::string type = params.get_string("rope_type").value_or(params.get_string("type").value_or("default"));
  RopeScaling& rs = c.rope_scaling;
  if (type == "default") {
    rs.type = RopeScalingType::none;
    return;
  }
  if (type == "linear") {
    rs.type = RopeScalingType::linear;
  } else if (type == "yarn") {
    rs.type = RopeScalingType::yarn;
  } else {
    throw Error(ErrorKind::unsupported, keys.source() + ": rope scaling type \"" + type +
                                            "\" is not supported (supported: default, linear, yarn)");
  }
  rs.factor = params.get_float("factor").value_or(1.0);
  rs.original_max_position_embeddings =
      params.get_int("original_max_position_embeddings").value_or(c.max_position_embeddings);
  rs.beta_fast = params.get_float("beta_fast").value_or(32.0);
  rs.beta_slow = params.get_float("beta_slow").value_or(1.0);
  rs.mscale = params.get_float("mscale").value_or(1.0);
  rs.mscale_all_dim = params.get_float("mscale_all_dim").value_or(0.0);
}

void read_common(const HfKeys& keys, ModelConfig& c) {
  c.vocab_size = keys.require_int("vocab_size");
  c.hidden_size = keys.require_int("hidden_size");
  c.num_layers = keys.require_int("num_hidden_layers");
  c.max_position_embeddings = keys.get_int("max_position_embeddings").value_or(4096);
  c.rms_norm_eps = keys.get_float("rms_norm_eps").value_or(1e-6);
  c.tie_word_embeddings = keys.get_bool("tie_word_embeddings").value_or(false);
  c.num_heads = keys.require_int("num_attention_heads");
  c.num_kv_heads = keys.get_int("num_key_value_heads").value_or(c.num_heads);
  c.head_dim = keys.get_int("head_dim").value_or(c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  read_rope(keys, c);
  c.intermediate_size = keys.get_int("intermediate_size").value_or(0);
  c.moe_intermediate_size = keys.get_int("moe_intermediate_size").value_or(0);
  for (const char* key : {"num_experts", "n_routed_experts", "num_local_experts"})
    if (auto n = keys.get_int(key)) c.num_experts = *n;
  c.num_experts_per_tok = keys.get_int("num_experts_per_tok").value_or(0);
  c.norm_topk_prob = keys.get_bool("norm_topk_prob").value_or(false);
  c.bos_token_id = keys.get_int("bos_token_id").value_or(-1);
  c.eos_token_ids = keys.get_int_list("eos_token_id");
}

nlohmann::json parse_json(std::string_view text, const std::string& source) {
  nlohmann::json root = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) throw Error(ErrorKind::corrupt_file, source + ": not valid JSON");
  if (!root.is_object()) throw Error(ErrorKind::corrupt_file, source + ": expected a JSON object");
  return root;
}

}  // namespace
}  // namespace tandem::model

namespace tandem {

ModelConfig parse_hf_config(std::string_view json_text, const std::string& source) {
  const nlohmann::json root = model::parse_json(json_text, source);
  const model::HfKeys keys(root, source);
  const auto model_type = keys.get_string("model_type");
  if (!model_type)
    throw Error(ErrorKind::corrupt_file, source + ": no \"model_type\" (supported: " + supported_architectures() + ")");
  const model::ArchitectureDescription* arch = model::find_by_model_type(*model_type);
  if (!arch)
    throw Error(ErrorKind::unsupported, source + ": model_type \"" + *model_type +
                                            "\" is not supported (supported: " + supported_architectures() + ")");
  ModelConfig c;
  c.architecture = arch->id;
  c.architecture_name = std::string(arch->hf_model_type);
  model::read_common(keys, c);
  arch->read_hf(keys, c);
  validate_model_config(c, source);
  return c;
}

void apply_hf_generation_config(std::string_view json_text, const std::string& source, ModelConfig& config) {
  const nlohmann::json root = model::parse_json(json_text, source);
  const model::HfKeys keys(root, source);
  if (auto bos = keys.get_int("bos_token_id")) config.bos_token_id = *bos;
  if (keys.has("eos_token_id")) config.eos_token_ids = keys.get_int_list("eos_token_id");
}

}  // namespace tandem
