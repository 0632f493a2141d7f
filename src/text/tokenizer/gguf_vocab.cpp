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

// DeepSeek-LLM / DeepSeek-Coder tokenizer.json: Isolated splits in sequence, then ByteLevel.
constexpr const char* kDeepseekLlmPatterns[] = {
    R"re([\r\n])re",
    R"re(\s?[A-Za-z\x{b5}\x{c0}-\x{d6}\x{d8}-\x{f6}\x{f8}-\x{1ba}\x{1bc}-\x{1bf}\x{1c4}-\x{293}\x{295}-\x{2af}\x{370}-\x{373}\x{376}\x{377}\x{37b}-\x{37d}\x{37f}\x{386}\x{388}-\x{38a}\x{38c}\x{38e}-\x{3a1}\x{3a3}-\x{3f5}\x{3f7}-\x{481}\x{48a}-\x{52f}\x{531}-\x{556}\x{10a0}-\x{10c5}\x{13a0}-\x{13f5}\x{13f8}-\x{13fd}\x{1c90}-\x{1cba}\x{1cbd}-\x{1cbf}\x{1d00}-\x{1d2b}\x{1d6b}-\x{1d77}\x{1d79}-\x{1d9a}\x{1e00}-\x{1f15}\x{1f18}-\x{1f1d}\x{1f20}-\x{1f45}\x{1f48}-\x{1f4d}\x{1f50}-\x{1f57}\x{1f59}\x{1f5b}\x{1f5d}\x{1f5f}-\x{1f7d}\x{1f80}-\x{1fb4}\x{1fb6}-\x{1fbc}\x{1fbe}\x{1fc2}-\x{1fc4}\x{1fc6}-\x{1fcc}\x{1fd0}-\x{1fd3}\x{1fd6}-\x{1fdb}\x{1fe0}-\x{1fec}\x{1ff2}-\x{1ff4}\x{1ff6}-\x{1ffc}\x{2102}\x{2107}\x{210a}-\x{2113}\x{2115}\x{2119}-\x{211d}\x{2124}\x{2126}\x{2128}\x{212a}-\x{212d}\x{212f}-\x{2134}\x{2139}\x{213c}-\x{213f}\x{2145}-\x{2149}\x{214e}\x{2183}\x{2184}\x{2c00}-\x{2c7b}\x{2c7e}-\x{2ce4}\x{2ceb}-\x{2cee}\x{2cf2}\x{2cf3}\x{a640}-\x{a66d}\x{a680}-\x{a69b}\x{a722}-\x{a76f}\x{a771}-\x{a787}\x{a78b}-\x{a78e}\x{ab70}-\x{abbf}\x{fb00}-\x{fb06}\x{fb13}-\x{fb17}\x{ff21}-\x{ff3a}\x{ff41}-\x{ff5a}\x{10400}-\x{1044f}\x{104b0}-\x{104d3}\x{104d8}-\x{104fb}\x{10c80}-\x{10cb2}\x{10cc0}-\x{10cf2}\x{118a0}-\x{118df}\x{1e900}-\x{1e943}]+)re",
    R"re(\s?[!-/:-~\x{ff01}-\x{ff0f}\x{ff1a}-\x{ff5e}\x{2018}-\x{201f}\x{3000}-\x{3002}]+)re",
    R"re(\s+$)re",
    R"re([\x{4e00}-\x{9fa5}\x{0800}-\x{4e00}\x{ac00}-\x{d7ff}]+)re",
    R"re(\p{N}+)re",
};
constexpr const char* kDeepseekCoderPatterns[] = {
    R"re([\r\n])re",
    R"re(\s?\p{L}+)re",
    R"re(\s?\p{P}+)re",
    R"re([\x{4e00}-\x{9fa5}\x{0800}-\x{4e00}\x{ac00}-\x{d7ff}]+)re",
    R"re(\p{N})re",
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
  } else if (pre == "deepseek-llm" || pre == "deepseek-coder") {
    // Not checked against an HF reference here (no fixture): the regexes of those tokenizers.
    if (pre == "deepseek-llm")
      for (const char* pattern : kDeepseekLlmPatterns) steps.push_back(text::make_isolating_regex_split(pattern));
    else
      for (const char* pattern : kDeepseekCoderPatterns) steps.push_back(text::make_isolating_regex_split(pattern));
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
                    "' is not supported (supported: qwen2, deepseek-v3, deepseek-llm, deepseek-coder, llama3, llama-bpe, gpt-2)");
  }
  choice.pre_tokenizer = text::make_sequence(std::move(steps));
  return choice;
}

std::optional<int32_t> optional_id(const GgufFile& gguf, const std::string& key, size_t vocab_size) {
  const auto value = gguf.get_int(key);
  if (!value) return std::nullopt;
  // An id outside the vocabulary is dropped, not fatal: the model loader already warns about it
  // (src/model/special_token_ids.cpp), and the rest of the tokenizer is sound.
  if (*value < 0 || static_cast<uint64_t>(*value) >= vocab_size) return std::nullopt;
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
  const GgufValue& tokens_value = gguf.require("tokenizer.ggml.tokens");
  const GgufArray& tokens = tokens_value.as_array();
  if (tokens.element_type != GgufType::string || tokens.size() == 0 || tokens.size() > (size_t{1} << 24))
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.tokens has " + std::to_string(tokens.size()) +
                                             " entries (expected 1 to 16M strings)");
  // A real vocabulary has no (or a handful of) empty entries. Millions of them cost the file 8
  // bytes each but the tokenizer ~100 (a string and its map entries): refuse such a file.
  size_t empty = 0;
  for (size_t id = 0; id < tokens.size(); ++id) empty += tokens.string_at(id).empty();
  if (empty > 256 && empty > tokens.size() / 100)
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.tokens has " + std::to_string(empty) +
                                             " empty entries of " + std::to_string(tokens.size()));
  const GgufValue* types_value = gguf.find("tokenizer.ggml.token_type");
  const GgufArray* types = types_value ? &types_value->as_array() : nullptr;
  if (types && types->size() != tokens.size())
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.token_type has " +
                                             std::to_string(types->size()) + " entries for " +
                                             std::to_string(tokens.size()) + " tokens");
  if (types && types->element_type == GgufType::string)
    throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.token_type holds strings, not integers");

  text::TokenizerParts parts;
  std::vector<std::string> vocab;
  vocab.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    vocab.emplace_back(tokens.string_at(id));
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
    const GgufArray& list = merges_value->as_array();
    if (list.element_type != GgufType::string)
      throw Error(ErrorKind::corrupt_file, file + ": tokenizer.ggml.merges is not an array of strings");
    merges.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string merge(list.string_at(i));
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

  parts.bos_id = optional_id(gguf, "tokenizer.ggml.bos_token_id", vocab_size).value_or(-1);
  parts.eos_id = optional_id(gguf, "tokenizer.ggml.eos_token_id", vocab_size).value_or(-1);
  // llama.cpp's default for byte-level BPE vocabularies is no BOS unless the file asks for it.
  const bool add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token");
  const bool add_eos = optional_bool(gguf, "tokenizer.ggml.add_eos_token");
  if ((add_bos && parts.bos_id >= 0) || (add_eos && parts.eos_id >= 0))
    parts.post_processor = text::make_bos_eos_processor(add_bos ? parts.bos_id : -1,
                                                        add_eos ? parts.eos_id : -1);
  return std::make_unique<text::BpeTokenizer>(std::move(parts));
}

}  // namespace tandem
