// Tokenizer::from_json: HF tokenizer.json (BPE model) into a BpeTokenizer.
#include <nlohmann/json.hpp>

#include "tandem/error.hpp"
#include "tandem/text/tokenizer.hpp"
#include "text/tokenizer/bpe_tokenizer.hpp"

namespace tandem {
namespace {

using nlohmann::json;

std::pair<std::string, std::string> parse_merge(const json& merge, size_t index) {
  if (merge.is_array() && merge.size() == 2)
    return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  if (merge.is_string()) {
    const auto& text = merge.get_ref<const std::string&>();
    const size_t space = text.find(' ');
    if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos)
      return {text.substr(0, space), text.substr(space + 1)};
  }
  throw Error(ErrorKind::corrupt_file, "tokenizer.json: model.merges[" + std::to_string(index) +
                                           "] = " + merge.dump() + " is not a pair of tokens");
}

bool non_empty_string(const json& model, const char* key) {
  return model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty();
}

std::unique_ptr<text::BpeModel> make_bpe_model(const json& model, bool byte_level) {
  const std::string type = model.value("type", "BPE");
  if (type != "BPE")
    throw Error(ErrorKind::unsupported,
                "tokenizer.json: model type '" + type + "' is not supported (only BPE)");
  if (non_empty_string(model, "continuing_subword_prefix") ||
      non_empty_string(model, "end_of_word_suffix"))
    throw Error(ErrorKind::unsupported,
                "tokenizer.json: BPE continuing_subword_prefix / end_of_word_suffix are not supported");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
    throw Error(ErrorKind::unsupported, "tokenizer.json: BPE dropout is not supported");

  const json& vocab_json = model.at("vocab");
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_json.items()) {
    const int64_t value = id.get<int64_t>();
    if (value < 0 || value > (int64_t{1} << 24))
      throw Error(ErrorKind::corrupt_file,
                  "tokenizer.json: vocab entry '" + token + "' has id " + std::to_string(value));
    max_id = std::max(max_id, value);
  }
  std::vector<std::string> vocab(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : vocab_json.items()) vocab[id.get<size_t>()] = token;

  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges")) {
    const json& merges_json = model["merges"];
    merges.reserve(merges_json.size());
    for (size_t i = 0; i < merges_json.size(); ++i) merges.push_back(parse_merge(merges_json[i], i));
  }

  text::BpeOptions options;
  options.byte_level = byte_level;
  options.byte_fallback = model.value("byte_fallback", false);
  options.ignore_merges = model.value("ignore_merges", false);
  options.fuse_unk = model.value("fuse_unk", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = vocab_json.find(model["unk_token"].get<std::string>());
    if (it == vocab_json.end())
      throw Error(ErrorKind::corrupt_file, "tokenizer.json: unk_token '" +
                                               model["unk_token"].get<std::string>() +
                                               "' is not in the vocabulary");
    options.unk_id = it->get<int32_t>();
  }
  return std::make_unique<text::BpeModel>(std::move(vocab), merges, options);
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json) {
  json root;
  try {
    root = json::parse(tokenizer_json);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::corrupt_file, std::string("tokenizer.json: not valid JSON: ") + e.what());
  }
  try {
    text::TokenizerParts parts;
    parts.normalizer = text::make_normalizer(root.value("normalizer", json()));
    parts.pre_tokenizer = text::make_pre_tokenizer(root.value("pre_tokenizer", json()));
    const bool byte_level = parts.pre_tokenizer && parts.pre_tokenizer->is_byte_level();
    parts.model = make_bpe_model(root.at("model"), byte_level);
    for (const auto& entry : root.value("added_tokens", json::array())) {
      text::AddedToken token;
      token.content = entry.at("content").get<std::string>();
      token.id = entry.at("id").get<int32_t>();
      token.special = entry.value("special", false);
      token.normalized = entry.value("normalized", !token.special);
      token.lstrip = entry.value("lstrip", false);
      token.rstrip = entry.value("rstrip", false);
      token.single_word = entry.value("single_word", false);
      parts.added_tokens.push_back(std::move(token));
    }
    const text::BpeModel& model = *parts.model;
    const auto& added = parts.added_tokens;
    auto token_id = [&](const std::string& content) {
      for (const auto& t : added)
        if (t.content == content) return t.id;
      return model.find(content);
    };
    parts.post_processor = text::make_post_processor(root.value("post_processor", json()), token_id);
    parts.decoder = text::make_decoder(root.value("decoder", json()));
    if (parts.post_processor) parts.bos_id = parts.post_processor->leading_special_id();
    return std::make_unique<text::BpeTokenizer>(std::move(parts));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::corrupt_file, std::string("tokenizer.json: ") + e.what());
  }
}

}  // namespace tandem
