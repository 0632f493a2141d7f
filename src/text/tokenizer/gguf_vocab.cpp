// Tokenizer::from_gguf: a GGUF-embedded vocabulary (tokenizer.ggml.*), with the normalizer and
// pre-tokenizer regexes of the HF tokenizer that `tokenizer.ggml.pre` names, so both give the
// same ids.
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/text/tokenizer.hpp"
#include "text/tokenizer/bpe_tokenizer.hpp"

#include <nlohmann/json.hpp>

namespace tandem {
namespace {

// Qwen2/Qwen3 tokenizer.json: Split(Isolated) with this regex, then ByteLevel; NFC first.
constexpr const char* kQwen2Pattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
// Llama 3 (llama-bpe): as Qwen2 but digits in groups of up to three.
constexpr const char* kLlama3Pattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
// DeepSeek-V3 tokenizer.json: three Isolated splits in sequence, then ByteLevel.
constexpr const char* kDeepseekV3Patterns[] = {
    R"re(\p{N}{1,3})re",
    R"re([\x{4e00}-\x{9fa5}\x{3040}-\x{309f}\x{30a0}-\x{30ff}]+)re",
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re",
};

enum GgufTokenType : int64_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

struct PreTokenizerChoice {
  std::unique_ptr<text::Normalizer> normalizer;
  std::unique_ptr<text::PreTokenizer> pre_tokenizer;
  bool ignore_merges = false;
};

PreTokenizerChoice choose_pre_tokenizer(const std::string& pre, const std::string& file) {
  PreTokenizerChoice choice;
  std::vector<std::unique_ptr<text::PreTokenizer>> steps;
  if (pre == "qwen2") {
    choice.normalizer = text::make_normalizer(nlohmann::json{{"type", "NFC"}});
    steps.push_back(text::make_isolating_regex_split(kQwen2Pattern));
    steps.push_back(text::make_byte_level(false, false));
  } else if (pre == "deepseek-v3") {
    for (const char* pattern : kDeepseekV3Patterns)
      steps.push_back(text::make_isolating_regex_split(pattern));
    steps.push_back(text::make_byte_level(false, false));
  } else if (pre == "llama3" || pre == "llama-bpe") {
    steps.push_back(text::make_isolating_regex_split(kLlama3Pattern));
    steps.push_back(text::make_byte_level(false, false));
    choice.ignore_merges = true;
  } else if (pre == "gpt-2" || pre == "gpt2") {
    steps.push_back(text::make_byte_level(false, true));
  } else {
    throw Error(ErrorKind::unsupported,
                file + ": tokenizer.ggml.pre '" + pre +
                    "' is not supported (supported: qwen2, deepseek-v3, llama3, llama-bpe, gpt-2)");
  }
  choice.pre_tokenizer = text::make_sequence(std::move(steps));
  return choice;
}

const GgufArray& require_array(const GgufFile& gguf, const std::string& key) {
  return gguf.require(key).as_array();
}

std::optional<int32_t> optional_id(const GgufFile& gguf, const std::string& key, size_t vocab_size,
                                   const std::string& file) {
  const auto value = gguf.get_int(key);
  if (!value) return std::nullopt;
  if (*value < 0 || static_cast<uint64_t>(*value) >= vocab_size)
    throw Error(ErrorKind::corrupt_file, file + ": " + key + " = " + std::to_string(*value) +
                                             " is outside the vocabulary of " +
                                             std::to_string(vocab_size) + " tokens");
  return static_cast<int32_t>(*value);
}

bool optional_bool(const GgufFile& gguf, const std::string& key) {
  const GgufValue* v = gguf.find(key);
  return v && v->as_bool();
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& gguf) {
  const std::string file = gguf.files().empty() ? std::string("GGUF") : gguf.files().front();
  const std::string model = gguf.get_string("tokenizer.ggml.model").value_or("");
  if (model != "gpt2")
    throw Error(ErrorKind::unsupported, file + ": tokenizer.ggml.model '" + model +
                                            "' is not supported (only gpt2, byte-level BPE)");
  const GgufArray& tokens = require_array(gguf, "tokenizer.ggml.tokens");
  if (tokens.values.empty() || tokens.values.size() > (size_t{1} << 24))
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.tokens has " +
                                             std::to_string(tokens.values.size()) + " entries");
  const GgufValue* types_value = gguf.find("tokenizer.ggml.token_type");
  const GgufArray* types = types_value ? &types_value->as_array() : nullptr;
  if (types && types->values.size() != tokens.values.size())
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.token_type has " +
                                             std::to_string(types->values.size()) + " entries for " +
                                             std::to_string(tokens.values.size()) + " tokens");

  text::TokenizerParts parts;
  std::vector<std::string> vocab;
  vocab.reserve(tokens.values.size());
  for (size_t id = 0; id < tokens.values.size(); ++id) {
    vocab.push_back(tokens.values[id].as_string());
    const int64_t type = types ? types->values[id].as_int() : normal;
    if (type == control || type == user_defined) {
      text::AddedToken added;
      added.content = vocab.back();
      added.id = static_cast<int32_t>(id);
      added.special = type == control;
      parts.added_tokens.push_back(std::move(added));
    }
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (const GgufValue* merges_value = gguf.find("tokenizer.ggml.merges")) {
    const auto& list = merges_value->as_array().values;
    merges.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string& merge = list[i].as_string();
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos)
        throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.merges[" + std::to_string(i) +
                                                 "] = '" + merge + "' is not two tokens");
      merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
    }
  }

  auto choice = choose_pre_tokenizer(gguf.get_string("tokenizer.ggml.pre").value_or("gpt-2"), file);
  parts.normalizer = std::move(choice.normalizer);
  parts.pre_tokenizer = std::move(choice.pre_tokenizer);
  text::BpeOptions options;
  options.byte_level = true;
  options.ignore_merges = choice.ignore_merges;
  const size_t vocab_size = vocab.size();
  try {
    parts.model = std::make_unique<text::BpeModel>(std::move(vocab), merges, options);
  } catch (const Error& e) {
    throw Error(e.kind(), file + ": " + e.what());
  }
  parts.decoder = text::make_byte_level_decoder();

  parts.bos_id = optional_id(gguf, "tokenizer.ggml.bos_token_id", vocab_size, file).value_or(-1);
  parts.eos_id = optional_id(gguf, "tokenizer.ggml.eos_token_id", vocab_size, file).value_or(-1);
  // llama.cpp's default for byte-level BPE vocabularies is no BOS unless the file asks for it.
  const bool add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token");
  const bool add_eos = optional_bool(gguf, "tokenizer.ggml.add_eos_token");
  if ((add_bos && parts.bos_id >= 0) || (add_eos && parts.eos_id >= 0))
    parts.post_processor = text::make_bos_eos_processor(add_bos ? parts.bos_id : -1,
                                                        add_eos ? parts.eos_id : -1);
  return std::make_unique<text::BpeTokenizer>(std::move(parts));
}

}  // namespace tandem
