#pragma once
// Added (and special) tokens: found in the text before pre-tokenisation, leftmost-longest, with
// HF's lstrip / rstrip / single_word rules.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::text {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool normalized = false;  // matched in normalized text rather than in the raw input
  bool lstrip = false, rstrip = false, single_word = false;
};

// A stretch of input: either plain text to tokenize or one added token.
struct TextSegment {
  std::string_view text;  // plain text when token_id < 0
  int32_t token_id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<const AddedToken*>& tokens);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits `text` into plain stretches and added tokens, appending to `out`.
  void split(std::string_view text, std::vector<TextSegment>& out) const;

 private:
  struct Node {
    std::map<unsigned char, int32_t> children;
    const AddedToken* token = nullptr;
  };
  // The longest token starting at `pos`, or nullptr.
  const AddedToken* longest_at(std::string_view text, size_t pos, size_t& length) const;
  std::vector<Node> nodes_{1};
  bool can_start_[256] = {};
};

}  // namespace tandem::text
