// open_model_files: decides what a path is (GGUF file or split part, HF folder, a safetensors
// file or index inside one) and reads its config and tensor table.
#include "tandem/formats/read_file.hpp"
#include "tandem/model/model_files.hpp"

#include <filesystem>

#include "tandem/error.hpp"
#include "tandem/model/config_readers.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr uintmax_t kMaxConfigBytes = 16u << 20;

std::string read_text_file(const fs::path& path) { return read_file_bytes(path.string(), kMaxConfigBytes); }

void apply_overrides(const ModelOverrides& overrides, ModelConfig& config, const std::string& source) {
  if (overrides.n_group) config.n_group = *overrides.n_group;
  if (overrides.topk_group) config.topk_group = *overrides.topk_group;
  if (overrides.rope_theta) config.rope_theta = *overrides.rope_theta;
  validate_model_config(config, source + " (with overrides)");
}

}  // namespace

const TensorTable& ModelFiles::tensors() const {
  if (format == Format::gguf && gguf) return gguf->tensors();
  if (format == Format::safetensors && safetensors) return safetensors->tensors();
  throw Error(ErrorKind::internal, path + ": model files have no tensor table");
}

ModelFiles open_model_files(const std::string& path, const ModelOverrides& overrides) {
  std::error_code ec;
  const fs::path p(path);
  const auto status = fs::status(p, ec);
  if (!fs::exists(status)) {
    // A folder on the way that we may not search also fails here: say so rather than "no such file".
    if (ec && status.type() != fs::file_type::not_found) throw Error(ErrorKind::io, path + ": cannot access: " + ec.message());
    throw Error(ErrorKind::io, path + ": no such file or folder");
  }

  ModelFiles files;
  files.path = path;
  if (fs::is_regular_file(status) && has_gguf_magic(path)) {
    files.format = ModelFiles::Format::gguf;
    files.directory = p.parent_path().empty() ? std::string(".") : p.parent_path().string();
    files.gguf = std::make_shared<const GgufFile>(GgufFile::open(path));
    files.config = config_from_gguf(*files.gguf, overrides, files.warnings);
    drop_special_ids_outside_vocab(files.config, path, files.warnings);
    return files;
  }

  const fs::path dir = fs::is_directory(status) ? p : p.parent_path();
  if (!overrides.metadata.empty())
    throw Error(ErrorKind::invalid_argument,
                "--override-kv " + overrides.metadata.front().spec + ": " + path +
                    " is not a GGUF file; --override-kv applies to GGUF metadata (for an HF folder, edit "
                    "its config.json)");
  files.format = ModelFiles::Format::safetensors;
  files.directory = dir.empty() ? std::string(".") : dir.string();
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path, ec))
    throw Error(ErrorKind::io, path + ": not a GGUF file, and no config.json in " + files.directory +
                                   " (expected a GGUF file or an HF model folder)");
  files.config = parse_hf_config(read_text_file(config_path), config_path.string());
  drop_special_ids_outside_vocab(files.config, config_path.string(), files.warnings);
  const fs::path generation_path = dir / "generation_config.json";
  if (fs::exists(generation_path, ec)) {
    apply_hf_generation_config(read_text_file(generation_path), generation_path.string(), files.config);
    drop_special_ids_outside_vocab(files.config, generation_path.string(), files.warnings);
  }
  apply_overrides(overrides, files.config, config_path.string());
  files.safetensors = std::make_shared<const SafetensorsModel>(SafetensorsModel::open(path));
  return files;
}

}  // namespace tandem
