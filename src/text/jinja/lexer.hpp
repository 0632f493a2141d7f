#pragma once
// Splits template source into text and tag tokens the way jinja2's lexer does, including its
// whitespace rules: `{%-`/`-%}` strip, trim_blocks (drop the newline after a block or comment
// tag), lstrip_blocks (drop a line's indentation before a block or comment tag), one trailing
// newline of the source dropped, newlines normalised to "\n".
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::jinja {

enum class TokenKind {
  text,         // literal template text, whitespace rules already applied
  var_begin,    // {{
  var_end,      // }}
  block_begin,  // {%
  block_end,    // %}
  name,         // identifiers and keywords
  string,       // a string literal, escapes decoded
  integer,
  floating,
  op,  // punctuation and operators: + - * / // % ** ~ == != < > <= >= = ( ) [ ] { } , . : |
  end_of_input,
};

struct Token {
  TokenKind kind;
  std::string text;
  int line = 1;
  int64_t integer = 0;
  double floating = 0.0;
};

struct LexerOptions {
  bool trim_blocks = false;
  bool lstrip_blocks = false;
  bool keep_trailing_newline = false;
};

// Throws tandem::Error(corrupt_file) naming the line for unterminated tags, comments, strings.
std::vector<Token> tokenize_template(std::string_view source, const LexerOptions& options);

}  // namespace tandem::jinja
