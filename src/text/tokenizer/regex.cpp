#include "text/tokenizer/regex.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <memory>

#include "tandem/error.hpp"

namespace tandem::text {
RegexMatch::RegexMatch() : data_(pcre2_match_data_create(1, nullptr)) {
  if (!data_) throw Error(ErrorKind::out_of_memory, "tokenizer regex: no memory for match data");
}

RegexMatch::~RegexMatch() { pcre2_match_data_free(data_); }

Regex::Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
  // PCRE2_LITERAL excludes UCP, so literal text is escaped instead.
  std::string source;
  if (literal) {
    for (char c : pattern) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x80 && !std::isalnum(u)) source.push_back('\\');
      source.push_back(c);
    }
  } else {
    source.assign(pattern);
  }
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options,
                        &error_code, &error_offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw Error(ErrorKind::unsupported,
                "tokenizer regex '" + pattern_ + "' does not compile at offset " +
                    std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(code_); }

bool Regex::find(std::string_view subject, size_t start, RegexMatch& match, size_t& match_begin,
                 size_t& match_end) const {
  pcre2_match_data* data = match.data();
  const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const int rc = jit_ ? pcre2_jit_match(code_, text, subject.size(), start, 0, data, nullptr)
                      : pcre2_match(code_, text, subject.size(), start, PCRE2_NO_UTF_CHECK, data,
                                    nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof(message));
    throw Error(ErrorKind::internal, "tokenizer regex '" + pattern_ +
                                         "' failed: " + reinterpret_cast<const char*>(message));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  match_begin = ovector[0];
  match_end = ovector[1];
  return true;
}

}  // namespace tandem::text
