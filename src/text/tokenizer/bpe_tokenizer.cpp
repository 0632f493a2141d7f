#include "text/tokenizer/bpe_tokenizer.hpp"

#include <algorithm>

#include "tandem/error.hpp"
#include "text/tokenizer/utf8.hpp"

namespace tandem::text {

BpeTokenizer::BpeTokenizer(TokenizerParts parts) : parts_(std::move(parts)) {
  if (!parts_.model) throw Error(ErrorKind::internal, "tokenizer built without a BPE model");
  vocab_size_ = static_cast<int64_t>(parts_.model->vocab().size());
  std::vector<const AddedToken*> raw;
  for (size_t i = 0; i < parts_.added_tokens.size(); ++i) {
    const AddedToken& token = parts_.added_tokens[i];
    if (token.id < 0)
      throw Error(ErrorKind::corrupt_file, "tokenizer: added token '" + token.content + "' has a negative id");
    added_by_id_[token.id] = i;
    added_by_text_.emplace(token.content, token.id);
    vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{token.id} + 1);
    if (!token.normalized) {
      raw.push_back(&token);
      continue;
    }
    // Matched in normalized text, so its own text is normalized too (as HF does).
    AddedToken form = token;
    if (parts_.normalizer) parts_.normalizer->normalize(form.content);
    normalized_forms_.push_back(std::move(form));
  }
  raw_matcher_ = AddedTokenMatcher(raw);
  std::vector<const AddedToken*> normalized;
  for (const auto& form : normalized_forms_) normalized.push_back(&form);
  normalized_matcher_ = AddedTokenMatcher(normalized);
}

const AddedToken* BpeTokenizer::added_token(int32_t id) const {
  const auto it = added_by_id_.find(id);
  return it == added_by_id_.end() ? nullptr : &parts_.added_tokens[it->second];
}

void BpeTokenizer::encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
  PieceList list;
  list.pieces.push_back(text);
  if (parts_.pre_tokenizer) parts_.pre_tokenizer->split(list);
  for (std::string_view piece : list.pieces) parts_.model->encode_word(piece, ids);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special) const {
  if (const size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
    throw Error(ErrorKind::invalid_argument,
                "tokenizer: input text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<TextSegment> segments, inner;
  raw_matcher_.split(text, segments);
  std::string normalized;
  for (const TextSegment& segment : segments) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
      continue;
    }
    if (!parts_.normalizer && normalized_matcher_.empty()) {
      encode_plain(segment.text, ids);
      continue;
    }
    normalized.assign(segment.text);
    if (parts_.normalizer) parts_.normalizer->normalize(normalized);
    inner.clear();
    normalized_matcher_.split(normalized, inner);
    for (const TextSegment& part : inner) {
      if (part.token_id >= 0)
        ids.push_back(part.token_id);
      else
        encode_plain(part.text, ids);
    }
  }
  if (add_special && parts_.post_processor) parts_.post_processor->process(ids);
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  const auto& vocab = parts_.model->vocab();
  for (int32_t id : ids) {
    if (const AddedToken* added = added_token(id)) {
      if (!(skip_special && added->special)) tokens.push_back(added->content);
    } else if (id >= 0 && static_cast<size_t>(id) < vocab.size() && !vocab[id].empty()) {
      tokens.push_back(vocab[id]);
    }  // ids outside the vocabulary are skipped, as HF does
  }
  std::string text;
  if (parts_.decoder) {
    parts_.decoder->decode_chain(tokens);
    for (const auto& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
  }
  return text;
}

std::string BpeTokenizer::token_text(int32_t id) const {
  if (const AddedToken* added = added_token(id)) return added->content;
  const auto& vocab = parts_.model->vocab();
  if (id >= 0 && static_cast<size_t>(id) < vocab.size()) return vocab[id];
  return {};
}

int32_t BpeTokenizer::token_id(std::string_view token) const {
  const auto it = added_by_text_.find(std::string(token));
  if (it != added_by_text_.end()) return it->second;
  return parts_.model->find(token);
}

bool BpeTokenizer::is_special(int32_t id) const {
  const AddedToken* added = added_token(id);
  return added && added->special;
}

}  // namespace tandem::text
