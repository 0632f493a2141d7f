#pragma once
// Typed, checked reads of configuration keys, so that architecture files never touch JSON or GGUF
// values directly and every wrong type becomes an Error naming the file and key.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tandem {
class GgufFile;
struct GgufValue;
struct MetadataOverride;
}

namespace tandem::model {

// config.json: absent and null keys read as "not there" (HF writes null for unset values).
class HfKeys {
 public:
  HfKeys(const nlohmann::json& root, std::string source) : root_(root), source_(std::move(source)) {}

  bool has(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  std::vector<int64_t> get_int_list(const std::string& key) const;  // an int or a list of ints
  int64_t require_int(const std::string& key) const;
  // Keys nested in an object value (rope_scaling, rope_parameters); absent object = no keys.
  HfKeys child(const std::string& key) const;
  const std::string& source() const { return source_; }

 private:
  const nlohmann::json* find(const std::string& key) const;
  const nlohmann::json& root_;
  std::string source_;
};

// GGUF metadata under "<architecture>.": get("expert_count") reads "deepseek2.expert_count".
class GgufKeys {
 public:
  // `--override-kv` values, consulted before the file; `read` collects the override keys looked up.
  struct Overrides {
    const std::vector<MetadataOverride>* list = nullptr;
    std::set<std::string> read;
  };

  GgufKeys(const GgufFile& file, std::string prefix, Overrides* overrides = nullptr)
      : file_(file), prefix_(std::move(prefix)), overrides_(overrides) {}

  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  int64_t require_int(const std::string& key) const;
  bool has_tensor(const std::string& name) const;
  // Layers 0..num_layers-1 whose "blk.N.<suffix>" tensor is absent (Qwen's dense layers, which
  // GGUF metadata does not list).
  std::vector<int64_t> layers_without(const std::string& suffix, int64_t num_layers) const;
  const GgufFile& file() const { return file_; }
  std::string source() const;  // the file's path, for messages
  const std::string& prefix() const { return prefix_; }

 private:
  // The value for prefix_ + key: an override (checked to have `want` type), else the file's.
  const GgufValue* find(const std::string& key, const char* want) const;

  const GgufFile& file_;
  std::string prefix_;
  Overrides* overrides_ = nullptr;
};

}  // namespace tandem::model
