#pragma once
// HF tokenizer.json pre-tokenizers: Split, ByteLevel, Digits, Whitespace, WhitespaceSplit and
// Sequence. Each refines a list of pieces; BPE then runs on every piece on its own.
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tandem::text {

// Pieces are views into the caller's text or into `storage` (for pieces a step had to rewrite).
struct PieceList {
  std::vector<std::string_view> pieces;
  std::deque<std::string> storage;
  std::string_view own(std::string s) { return storage.emplace_back(std::move(s)); }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void split(PieceList& list) const = 0;
  // True when this step (or one inside it) is ByteLevel: the model then works on raw bytes.
  virtual bool is_byte_level() const { return false; }
};

// nullptr for JSON null. Throws Error(unsupported) naming an unknown type or behavior.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec);

// A Split pre-tokenizer built directly (GGUF vocabularies name their regexes, not JSON).
std::unique_ptr<PreTokenizer> make_isolating_regex_split(const std::string& pattern);
std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> steps);
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex);

}  // namespace tandem::text
