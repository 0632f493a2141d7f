#pragma once
// Opening a model from what users download: a GGUF file (or the first of a split set) or an HF
// folder (config.json + safetensors shards). Yields the typed config and the tensor table; the
// architecture description then binds tensors to roles (bind_weights).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/formats/gguf.hpp"
#include "tandem/formats/safetensors.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

// `--override-kv KEY=TYPE:VALUE` (as llama.cpp spells it; TYPE int, float, bool or str): replaces or
// adds GGUF metadata key KEY before the config is read. `spec` is the text as given, for messages.
struct MetadataOverride {
  std::string key;
  GgufValue value;  // i64, f64, boolean or string
  std::string spec;
};

// Throws Error(invalid_argument) naming the spec: missing '=' or ':', empty key, unknown type,
// malformed value (float:abc, bool:yes).
MetadataOverride parse_metadata_override(std::string_view spec);
// A list separated by newlines or commas (so a str value cannot hold either); empty items skipped.
std::vector<MetadataOverride> parse_metadata_overrides(std::string_view list);

// User overrides for what files may lack or get wrong (e.g. old DeepSeek-V3 GGUFs without
// expert_group_count).
struct ModelOverrides {
  std::optional<int64_t> n_group;
  std::optional<int64_t> topk_group;
  std::optional<double> rope_theta;  // GGUFs without rope.freq_base
  // GGUF metadata overrides, applied where the loader reads metadata. A key the loader reads with
  // another type, or a key neither in the file nor read by the loader, is an Error; HF folders
  // reject them (their config is config.json).
  std::vector<MetadataOverride> metadata;
};

struct ModelFiles {
  enum class Format { gguf, safetensors };
  Format format = Format::safetensors;
  std::string path;       // as given
  std::string directory;  // folder with the model's side files (tokenizer.json, generation_config.json)
  ModelConfig config;
  std::shared_ptr<const GgufFile> gguf;                // set when format == gguf
  std::shared_ptr<const SafetensorsModel> safetensors; // set when format == safetensors
  std::vector<std::string> warnings;                   // shown to the user by the loader

  const TensorTable& tensors() const;
};

// Throws Error naming the path and what is wrong (missing config, unknown architecture, ...).
ModelFiles open_model_files(const std::string& path, const ModelOverrides& overrides = {});

// Binds every tensor the forward pass needs to its role and checks its shape against the config.
// Throws Error naming the tensor, its shape and the expected one.
Weights bind_weights(const ModelFiles& files);

}  // namespace tandem
