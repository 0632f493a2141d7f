#pragma once
// A compiled PCRE2 pattern (UTF + UCP, JIT when available) for the tokenizer's splitting rules.
#include <cstddef>
#include <string>
#include <string_view>

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace tandem::text {

// Where Regex::find writes a match: scratch owned by the caller (one per split or normalise call,
// used by one thread), so patterns shared by threads keep no per-thread state.
class RegexMatch {
 public:
  RegexMatch();  // Error(out_of_memory) when PCRE2 cannot allocate it
  ~RegexMatch();
  RegexMatch(const RegexMatch&) = delete;
  RegexMatch& operator=(const RegexMatch&) = delete;
  pcre2_real_match_data_8* data() const { return data_; }

 private:
  pcre2_real_match_data_8* data_;
};

class Regex {
 public:
  // `literal`: match `pattern` as plain text. Throws Error(unsupported) naming the pattern.
  Regex(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // First match at or after `start` in `subject` (valid UTF-8); false when none.
  bool find(std::string_view subject, size_t start, RegexMatch& match, size_t& match_begin,
            size_t& match_end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace tandem::text
