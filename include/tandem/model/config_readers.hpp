#pragma once
// The two ways a ModelConfig comes to be: HF config.json (either key style) and GGUF metadata.
// open_model_files() uses these; they are public for tools, tests and fuzzing.
#include <string>
#include <string_view>
#include <vector>

#include "tandem/model/model_config.hpp"

namespace tandem {

class GgufFile;
struct ModelOverrides;

// Parses config.json text. `source` names the file in error messages. Throws Error on malformed
// JSON, wrong key types, an unknown model_type, or sizes that fail validation.
ModelConfig parse_hf_config(std::string_view json_text, const std::string& source);

// Applies generation_config.json (bos/eos ids) on top of a parsed config.
void apply_hf_generation_config(std::string_view json_text, const std::string& source, ModelConfig& config);

// Reads the config from GGUF metadata. Gaps the loader can work around (no expert groups in an old
// DeepSeek-V3 file, no rope base) append a line to `warnings`; `overrides` take precedence.
ModelConfig config_from_gguf(const GgufFile& gguf, const ModelOverrides& overrides,
                             std::vector<std::string>& warnings);

// Drops BOS / EOS ids outside [0, vocab_size), adding a warning naming `source` for each: a wrong
// id in an otherwise good file should not make the model unusable, nor index past the vocabulary.
void drop_special_ids_outside_vocab(ModelConfig& config, const std::string& source,
                                    std::vector<std::string>& warnings);

// Checks sizes and their relations (heads divide, top-k within experts, groups divide experts,
// limits that keep later products from overflowing). Throws Error(corrupt_file) naming `source`.
void validate_model_config(const ModelConfig& config, const std::string& source);

}  // namespace tandem
