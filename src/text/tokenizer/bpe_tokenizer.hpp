#pragma once
// The Tokenizer implementation: added tokens → normalizer → pre-tokenizer → BPE → post-processor,
// and back through the decoder. Built by the tokenizer.json and GGUF loaders.
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tandem/text/tokenizer.hpp"
#include "text/tokenizer/added_tokens.hpp"
#include "text/tokenizer/bpe.hpp"
#include "text/tokenizer/decoder.hpp"
#include "text/tokenizer/normalizer.hpp"
#include "text/tokenizer/post_processor.hpp"
#include "text/tokenizer/pre_tokenizer.hpp"

namespace tandem::text {

struct TokenizerParts {
  std::unique_ptr<Normalizer> normalizer;        // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;   // may be null
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added_tokens;
  std::unique_ptr<PostProcessor> post_processor;  // may be null
  std::unique_ptr<Decoder> decoder;               // may be null
  int32_t bos_id = -1;
  int32_t eos_id = -1;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(TokenizerParts parts);

  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  std::string token_text(int32_t id) const override;
  int32_t token_id(std::string_view token) const override;
  bool is_special(int32_t id) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return parts_.bos_id; }
  int32_t eos_id() const override { return parts_.eos_id; }

  void set_bos_id(int32_t id) { parts_.bos_id = id; }
  void set_eos_id(int32_t id) { parts_.eos_id = id; }

 private:
  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const;
  const AddedToken* added_token(int32_t id) const;

  TokenizerParts parts_;
  AddedTokenMatcher raw_matcher_;         // tokens with normalized = false
  std::vector<AddedToken> normalized_forms_;  // tokens with normalized = true, text normalized
  AddedTokenMatcher normalized_matcher_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  std::unordered_map<std::string, int32_t> added_by_text_;
  int64_t vocab_size_ = 0;
};

}  // namespace tandem::text
