// ModelConfig from GGUF metadata: "<arch>.*" keys common to the families here, then the
// family's own keys from its description.
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "model/architecture.hpp"
#include "model/config_keys.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/model/config_readers.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem::model {

std::string GgufKeys::source() const { return file_.files().empty() ? std::string("GGUF") : file_.files().front(); }

const GgufValue* GgufKeys::find(const std::string& key, const char* want) const {
  const std::string full = prefix_ + key;
  if (overrides_ && overrides_->list) {
    const MetadataOverride* found = nullptr;
    for (const auto& o : *overrides_->list)
      if (o.key == full) found = &o;  // the last one given wins
    if (found) {
      overrides_->read.insert(full);
      const std::string_view want_view(want);
      const GgufType t = found->value.type;
      const bool ok = (want_view == "int" && t == GgufType::i64) || (want_view == "float" && t == GgufType::f64) ||
                      (want_view == "bool" && t == GgufType::boolean) || (want_view == "str" && t == GgufType::string);
      if (!ok)
        throw Error(ErrorKind::invalid_argument, "--override-kv " + found->spec + ": the loader reads " + full +
                                                     " as " + want + " (write " + full + "=" + want + ":VALUE)");
      return &found->value;
    }
  }
  return file_.find(full);
}

std::optional<int64_t> GgufKeys::get_int(const std::string& key) const {
  const GgufValue* v = find(key, "int");
  if (!v) return std::nullopt;
  return v->as_int();
}

std::optional<double> GgufKeys::get_float(const std::string& key) const {
  const GgufValue* v = find(key, "float");
  if (!v) return std::nullopt;
  const double d = v->as_float();
  if (!std::isfinite(d)) throw Error(ErrorKind::corrupt_file, source() + ": " + prefix_ + key + " is not finite");
  return d;
}

std::optional<bool> GgufKeys::get_bool(const std::string& key) const {
  const GgufValue* v = find(key, "bool");
  if (!v) return std::nullopt;
  return v->as_bool();
}

std::optional<std::string> GgufKeys::get_string(const std::string& key) const {
  const GgufValue* v = find(key, "str");
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
                                       "may say otherwise; override with --override-kv " + keys.prefix() +
                                       "rope.freq_base=float:1000000 or whatever value config.json gives)");
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
    c.vocab_size = static_cast<int64_t>(tokens->as_array().size());
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

MetadataOverride parse_metadata_override(std::string_view spec) {
  const std::string text(spec);
  auto fail = [&](const std::string& why) {
    return Error(ErrorKind::invalid_argument,
                 "--override-kv '" + text + "': " + why + " (expected KEY=TYPE:VALUE, TYPE int, float, bool or str)");
  };
  const size_t eq = text.find('=');
  if (eq == std::string::npos) throw fail("no '='");
  if (eq == 0) throw fail("empty key");
  const size_t colon = text.find(':', eq + 1);
  if (colon == std::string::npos) throw fail("no ':' between TYPE and VALUE");
  MetadataOverride o;
  o.key = text.substr(0, eq);
  o.spec = text;
  const std::string type = text.substr(eq + 1, colon - eq - 1);
  const std::string value = text.substr(colon + 1);
  if (type == "int") {
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc() || end != value.data() + value.size())
      throw fail("'" + value + "' is not an int");
    o.value.type = GgufType::i64;
    o.value.value = v;
  } else if (type == "float") {
    char* end = nullptr;
    const double v = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
    if (value.empty() || end != value.c_str() + value.size() || !std::isfinite(v) ||
        std::isspace(static_cast<unsigned char>(value.front())))
      throw fail("'" + value + "' is not a finite float");
    o.value.type = GgufType::f64;
    o.value.value = v;
  } else if (type == "bool") {
    if (value != "true" && value != "false") throw fail("'" + value + "' is not a bool (true or false)");
    o.value.type = GgufType::boolean;
    o.value.value = value == "true";
  } else if (type == "str") {
    o.value.type = GgufType::string;
    o.value.value = value;
  } else {
    throw fail("unknown type '" + type + "'");
  }
  return o;
}

std::vector<MetadataOverride> parse_metadata_overrides(std::string_view list) {
  std::vector<MetadataOverride> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t end = list.find_first_of(",\n", pos);
    if (end == std::string_view::npos) end = list.size();
    std::string_view item = list.substr(pos, end - pos);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\r')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\r')) item.remove_suffix(1);
    if (!item.empty()) out.push_back(parse_metadata_override(item));
    pos = end + 1;
  }
  return out;
}

ModelConfig config_from_gguf(const GgufFile& gguf, const ModelOverrides& overrides, std::vector<std::string>& warnings) {
  const std::string source = gguf.files().empty() ? std::string("GGUF") : gguf.files().front();
  const model::ArchitectureDescription& arch = model::find_gguf_architecture(gguf, source);
  model::GgufKeys::Overrides metadata_overrides;
  metadata_overrides.list = &overrides.metadata;
  const model::GgufKeys keys(gguf, gguf.architecture() + ".", &metadata_overrides);
  ModelConfig c;
  c.architecture = arch.id;
  c.architecture_name = std::string(arch.hf_model_type);
  model::read_common(keys, gguf, c, warnings);
  arch.read_gguf(keys, c, warnings);
  for (const auto& o : overrides.metadata) {
    if (metadata_overrides.read.count(o.key)) continue;
    if (!gguf.find(o.key))
      throw Error(ErrorKind::invalid_argument,
                  "--override-kv " + o.spec + ": unknown override key " + o.key + " (not in " + source +
                      ", and the loader reads no such key; keys it reads start with \"" + keys.prefix() + "\")");
    warnings.push_back("--override-kv " + o.spec + ": the config loader does not read " + o.key +
                       ", so the override has no effect");
  }
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
