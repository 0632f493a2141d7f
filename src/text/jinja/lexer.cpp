#include "text/jinja/lexer.hpp"

#include <fmt/core.h>

#include <cctype>
#include <charconv>

#include "tandem/error.hpp"
#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

namespace {

// Python's "\n".join(source.splitlines()): every line break becomes "\n", and the final one
// goes unless keep_trailing_newline.
std::string normalize_newlines(std::string_view source, bool keep_trailing_newline) {
  std::string out;
  out.reserve(source.size());
  for (size_t pos = 0; pos < source.size();) {
    size_t start = pos;
    char32_t cp = decode_code_point(source, pos);
    bool is_break = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D ||
                    cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (!is_break) {
      out.append(source.substr(start, pos - start));
      continue;
    }
    if (cp == '\r' && pos < source.size() && source[pos] == '\n') ++pos;
    out += '\n';
  }
  if (!keep_trailing_newline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  Lexer(std::string source, const LexerOptions& options) : src_(std::move(source)), options_(options) {}

  std::vector<Token> run() {
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = find_tag_start(pos);
      std::string text = src_.substr(pos, tag - pos);
      if (tag == src_.size()) {
        emit_text(std::move(text), pos);
        break;
      }
      char kind = src_[tag + 1];
      char modifier = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (modifier == '+' && kind == '{') modifier = '\0';  // `{{+x}}` is unary plus
      if (modifier == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (options_.lstrip_blocks && kind != '{' && modifier != '+') {
        lstrip_line(text, pos);
      }
      emit_text(std::move(text), pos);
      size_t body = tag + 2 + (modifier == '-' || modifier == '+' ? 1 : 0);
      int line = line_at(tag);
      if (kind == '#') {
        pos = lex_comment(body, line);
      } else if (kind == '%' && is_raw_block(body)) {
        pos = lex_raw(tag, body, line);
      } else {
        pos = lex_tag(kind, body, line);
      }
    }
    tokens_.push_back({TokenKind::end_of_input, "", line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  size_t find_tag_start(size_t from) const {
    for (size_t k = from; k + 1 < src_.size(); ++k)
      if (src_[k] == '{' && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    return src_.size();
  }

  int line_at(size_t pos) {
    for (; line_pos_ < pos && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  // lstrip_blocks: the tag's line holds only spaces/tabs before it.
  void lstrip_line(std::string& text, size_t text_start) const {
    size_t newline = text.rfind('\n');
    size_t line_start = newline == std::string::npos ? 0 : newline + 1;
    bool at_line_start = newline != std::string::npos || text_start == 0 || src_[text_start - 1] == '\n';
    if (!at_line_start) return;
    for (size_t k = line_start; k < text.size(); ++k)
      if (text[k] != ' ' && text[k] != '\t') return;
    text.resize(line_start);
  }

  void emit_text(std::string text, size_t pos) {
    if (!text.empty()) tokens_.push_back({TokenKind::text, std::move(text), line_at(pos)});
  }

  // After a tag: `-` strips all following whitespace; trim_blocks drops one newline (block and
  // comment tags only, unless `+`).
  size_t after_tag(size_t end_pos, char modifier, bool is_block_or_comment) const {
    if (modifier == '-') {
      while (end_pos < src_.size() && is_space(src_[end_pos])) ++end_pos;
    } else if (modifier != '+' && is_block_or_comment && options_.trim_blocks && end_pos < src_.size() &&
               src_[end_pos] == '\n') {
      ++end_pos;
    }
    return end_pos;
  }

  size_t lex_comment(size_t body, int line) {
    size_t end = src_.find("#}", body);
    if (end == std::string::npos)
      throw Error(ErrorKind::corrupt_file,
                  fmt::format("chat template line {}: unclosed comment '{{#'", line));
    char modifier = end > body && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : '\0';
    return after_tag(end + 2, modifier, true);
  }

  bool is_raw_block(size_t body) const {
    size_t k = body;
    while (k < src_.size() && is_space(src_[k])) ++k;
    if (src_.compare(k, 3, "raw") != 0) return false;
    k += 3;
    while (k < src_.size() && is_space(src_[k])) ++k;
    return src_.compare(k, 2, "%}") == 0 || src_.compare(k, 3, "-%}") == 0 || src_.compare(k, 3, "+%}") == 0;
  }

  size_t lex_raw(size_t, size_t body, int line) {
    size_t open_end = src_.find("%}", body);
    char open_modifier = src_[open_end - 1];
    size_t content = after_tag(open_end + 2, open_modifier == '-' ? '-' : '\0', true);
    for (size_t k = content; (k = src_.find("{%", k)) != std::string::npos; k += 2) {
      size_t j = k + 2;
      bool strip_before = j < src_.size() && src_[j] == '-';
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) ++j;
      while (j < src_.size() && is_space(src_[j])) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && is_space(src_[j])) ++j;
      char close_modifier = '\0';
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) close_modifier = src_[j++];
      if (src_.compare(j, 2, "%}") != 0) continue;
      std::string text = src_.substr(content, k - content);
      if (strip_before)
        while (!text.empty() && is_space(text.back())) text.pop_back();
      if (!text.empty()) tokens_.push_back({TokenKind::text, std::move(text), line});
      return after_tag(j + 2, close_modifier, true);
    }
    throw Error(ErrorKind::corrupt_file,
                fmt::format("chat template line {}: unclosed block 'raw' (no endraw)", line));
  }

  size_t lex_tag(char kind, size_t pos, int line) {
    bool is_block = kind == '%';
    tokens_.push_back({is_block ? TokenKind::block_begin : TokenKind::var_begin, "", line});
    const char* closer = is_block ? "%}" : "}}";
    int depth = 0;  // brackets opened inside the tag: `}}` inside a dict literal is not the end
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size())
        throw Error(ErrorKind::corrupt_file,
                    fmt::format("chat template line {}: unclosed tag '{}' (missing '{}')", line,
                                is_block ? "{%" : "{{", closer));
      int token_line = line_at(pos);
      if (depth == 0) {
        char c = src_[pos];
        if ((c == '-' || c == '+') && src_.compare(pos + 1, 2, closer) == 0 && (is_block || c == '-')) {
          tokens_.push_back({is_block ? TokenKind::block_end : TokenKind::var_end, "", token_line});
          return after_tag(pos + 3, c, is_block);
        }
        if (src_.compare(pos, 2, closer) == 0) {
          tokens_.push_back({is_block ? TokenKind::block_end : TokenKind::var_end, "", token_line});
          return after_tag(pos + 2, '\0', is_block);
        }
      }
      pos = lex_expression_token(pos, token_line, depth);
    }
  }

  size_t lex_expression_token(size_t pos, int line, int& depth) {
    char c = src_[pos];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos;
      while (end < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_'))
        ++end;
      tokens_.push_back({TokenKind::name, src_.substr(pos, end - pos), line});
      return end;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) return lex_number(pos, line);
    if (c == '\'' || c == '"') return lex_string(pos, line);
    static const char* const two_char_ops[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : two_char_ops)
      if (src_.compare(pos, 2, op) == 0) {
        tokens_.push_back({TokenKind::op, op, line});
        return pos + 2;
      }
    if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) != std::string_view::npos) {
      if (c == '(' || c == '[' || c == '{') ++depth;
      if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
      tokens_.push_back({TokenKind::op, std::string(1, c), line});
      return pos + 1;
    }
    throw Error(ErrorKind::corrupt_file,
                fmt::format("chat template line {}: unexpected character '{}'", line, c));
  }

  size_t lex_number(size_t pos, int line) {
    size_t end = pos;
    bool is_float = false;
    std::string digits;
    auto take_digits = [&] {
      while (end < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[end])) || src_[end] == '_')) {
        if (src_[end] != '_') digits += src_[end];
        ++end;
      }
    };
    take_digits();
    if (end + 1 < src_.size() && src_[end] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[end + 1]))) {
      is_float = true;
      digits += src_[end++];
      take_digits();
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t exponent = end + 1;
      if (exponent < src_.size() && (src_[exponent] == '+' || src_[exponent] == '-')) ++exponent;
      if (exponent < src_.size() && std::isdigit(static_cast<unsigned char>(src_[exponent]))) {
        is_float = true;
        digits += src_.substr(end, exponent - end);
        end = exponent;
        take_digits();
      }
    }
    Token token{is_float ? TokenKind::floating : TokenKind::integer, src_.substr(pos, end - pos), line};
    const char* first = digits.data();
    const char* last = digits.data() + digits.size();
    auto result =
        is_float ? std::from_chars(first, last, token.floating) : std::from_chars(first, last, token.integer);
    if (result.ec != std::errc() || result.ptr != last)
      throw Error(ErrorKind::corrupt_file,
                  fmt::format("chat template line {}: bad number '{}'", line, token.text));
    tokens_.push_back(std::move(token));
    return end;
  }

  size_t lex_string(size_t pos, int line) {
    char quote = src_[pos];
    std::string value;
    size_t k = pos + 1;
    while (true) {
      if (k >= src_.size())
        throw Error(ErrorKind::corrupt_file,
                    fmt::format("chat template line {}: unterminated string literal", line));
      char c = src_[k];
      if (c == quote) break;
      if (c != '\\' || k + 1 >= src_.size()) {
        value += c;
        ++k;
        continue;
      }
      char e = src_[k + 1];
      k += 2;
      switch (e) {
        case 'n':
          value += '\n';
          break;
        case 't':
          value += '\t';
          break;
        case 'r':
          value += '\r';
          break;
        case 'b':
          value += '\b';
          break;
        case 'f':
          value += '\f';
          break;
        case 'v':
          value += '\v';
          break;
        case 'a':
          value += '\a';
          break;
        case '0':
          value += '\0';
          break;
        case '\\':
          value += '\\';
          break;
        case '\'':
          value += '\'';
          break;
        case '"':
          value += '"';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          size_t width = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          auto result =
              std::from_chars(src_.data() + k, src_.data() + std::min(k + width, src_.size()), cp, 16);
          if (result.ec != std::errc() || result.ptr != src_.data() + k + width || cp > 0x10FFFF)
            throw Error(ErrorKind::corrupt_file,
                        fmt::format("chat template line {}: bad \\{} escape in string", line, e));
          append_utf8(value, cp);
          k += width;
          break;
        }
        default:  // Python keeps unknown escapes as written
          value += '\\';
          value += e;
      }
    }
    tokens_.push_back({TokenKind::string, std::move(value), line});
    return k + 1;
  }

  std::string src_;
  LexerOptions options_;
  std::vector<Token> tokens_;
  size_t line_pos_ = 0;
  int line_ = 1;
};

}  // namespace

std::vector<Token> tokenize_template(std::string_view source, const LexerOptions& options) {
  return Lexer(normalize_newlines(source, options.keep_trailing_newline), options).run();
}

}  // namespace tandem::jinja
