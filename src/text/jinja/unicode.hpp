#pragma once
// The few Unicode operations Python's str gives templates: indexing by code point, whitespace
// as str.strip() knows it, case mapping.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::jinja {

// Byte offsets of each code point's start, plus text.size() at the end (size = code points + 1).
// Invalid UTF-8 counts one code point per byte.
std::vector<size_t> code_point_offsets(std::string_view text);
size_t code_point_count(std::string_view text);
// Decodes one code point at `pos`, advancing it; an invalid byte decodes as itself.
char32_t decode_code_point(std::string_view text, size_t& pos);
void append_utf8(std::string& out, char32_t cp);

// Python str.isspace() for one code point.
bool is_python_space(char32_t cp);
// str.strip() / lstrip() / rstrip(): whitespace when `chars` is null, else any of `chars`' code points.
std::string strip_chars(std::string_view text, const std::string* chars, bool left, bool right);

std::string to_lower(std::string_view text);
std::string to_upper(std::string_view text);
std::string capitalize(std::string_view text);  // first upper, rest lower
std::string title_case(std::string_view text);

}  // namespace tandem::jinja
