// Tokenizer::load: a model or tokenizer folder, a tokenizer.json file, or a GGUF file. A folder's
// tokenizer_config.json supplies the BOS / EOS tokens that tokenizer.json does not name.
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tandem/formats/read_file.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/text/tokenizer.hpp"
#include "text/tokenizer/bpe_tokenizer.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) { return read_file_bytes(path.string()); }

// "bos_token": "<s>" or {"content": "<s>", ...}
std::string special_token_text(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return {};
  const auto& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return {};
}

void apply_tokenizer_config(text::BpeTokenizer& tokenizer, const fs::path& config_path) {
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec)) return;
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::corrupt_file, config_path.string() + ": not valid JSON: " + e.what());
  }
  if (const auto bos = special_token_text(config, "bos_token"); !bos.empty()) {
    if (tokenizer.bos_id() < 0) tokenizer.set_bos_id(tokenizer.token_id(bos));
  }
  if (const auto eos = special_token_text(config, "eos_token"); !eos.empty())
    tokenizer.set_eos_id(tokenizer.token_id(eos));
}

std::unique_ptr<Tokenizer> load_json(const fs::path& json_path) {
  std::unique_ptr<Tokenizer> tokenizer;
  try {
    tokenizer = Tokenizer::from_json(read_file(json_path));
  } catch (const Error& e) {
    throw Error(e.kind(), json_path.string() + ": " + e.what());
  }
  apply_tokenizer_config(static_cast<text::BpeTokenizer&>(*tokenizer),
                         json_path.parent_path() / "tokenizer_config.json");
  return tokenizer;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path_text) {
  const fs::path path(path_text);
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::is_regular_file(path / "tokenizer.json", ec)) return load_json(path / "tokenizer.json");
    std::vector<fs::path> ggufs;
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
    std::sort(ggufs.begin(), ggufs.end());
    if (!ggufs.empty()) return from_gguf(GgufFile::open(ggufs.front().string()));
    throw Error(ErrorKind::io, path_text + ": folder has neither tokenizer.json nor a .gguf file");
  }
  if (!fs::is_regular_file(path, ec))
    throw Error(ErrorKind::io, path_text + ": no such tokenizer file or folder");
  if (path.extension() == ".gguf" || has_gguf_magic(path.string())) return from_gguf(GgufFile::open(path_text));
  return load_json(path);
}

}  // namespace tandem
