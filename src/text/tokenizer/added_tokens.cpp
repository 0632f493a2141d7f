#include "text/tokenizer/added_tokens.hpp"

#include <utf8proc.h>

#include "text/tokenizer/utf8.hpp"

namespace tandem::text {
namespace {

bool is_white_space(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == 0x0B || cp == 0x0C || cp == '\r' || cp == 0x85) return true;
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return category == UTF8PROC_CATEGORY_ZS || category == UTF8PROC_CATEGORY_ZL ||
         category == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(char32_t cp) {
  if (cp == '_') return true;
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (category >= UTF8PROC_CATEGORY_LU && category <= UTF8PROC_CATEGORY_LO) ||
         (category >= UTF8PROC_CATEGORY_ND && category <= UTF8PROC_CATEGORY_NO) ||
         (category >= UTF8PROC_CATEGORY_MN && category <= UTF8PROC_CATEGORY_ME);
}

size_t previous_char_start(std::string_view text, size_t pos) {
  size_t i = pos - 1;
  while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
  return i;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<const AddedToken*>& tokens) {
  for (const AddedToken* token : tokens) {
    if (token->content.empty()) continue;
    int32_t node = 0;
    for (char c : token->content) {
      const auto byte = static_cast<unsigned char>(c);
      const auto it = nodes_[node].children.find(byte);
      if (it != nodes_[node].children.end()) {
        node = it->second;
      } else {
        const auto child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace(byte, child);
        nodes_.emplace_back();
        node = child;
      }
    }
    nodes_[node].token = token;
    can_start_[static_cast<unsigned char>(token->content[0])] = true;
  }
}

const AddedToken* AddedTokenMatcher::longest_at(std::string_view text, size_t pos,
                                                size_t& length) const {
  const AddedToken* best = nullptr;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& children = nodes_[node].children;
    const auto it = children.find(static_cast<unsigned char>(text[i]));
    if (it == children.end()) break;
    node = it->second;
    if (nodes_[node].token) {
      best = nodes_[node].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<TextSegment>& out) const {
  if (empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return;
  }
  size_t plain_start = 0;  // start of the pending plain stretch
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    const AddedToken* token =
        can_start_[static_cast<unsigned char>(text[pos])] ? longest_at(text, pos, length) : nullptr;
    if (!token) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + length;
    if (token->single_word) {
      bool bounded = true;
      if (begin > 0) {
        size_t i = previous_char_start(text, begin);
        bounded &= !is_word_char(next_code_point(text, i));
      }
      if (end < text.size()) {
        size_t i = end;
        bounded &= !is_word_char(next_code_point(text, i));
      }
      if (!bounded) {
        pos = end;  // matches do not overlap: the search resumes after this one
        continue;
      }
    }
    if (token->lstrip) {
      while (begin > plain_start) {
        size_t i = previous_char_start(text, begin);
        const size_t char_start = i;
        if (!is_white_space(next_code_point(text, i))) break;
        begin = char_start;
      }
    }
    if (token->rstrip) {
      while (end < text.size()) {
        size_t i = end;
        if (!is_white_space(next_code_point(text, i))) break;
        end = i;
      }
    }
    if (begin > plain_start) out.push_back({text.substr(plain_start, begin - plain_start), -1});
    out.push_back({{}, token->id});
    plain_start = pos = end;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
}

}  // namespace tandem::text
