#include "text/jinja/unicode.hpp"

#include <utf8proc.h>

#include <algorithm>

namespace tandem::jinja {

char32_t decode_code_point(std::string_view text, size_t& pos) {
  auto byte = static_cast<unsigned char>(text[pos]);
  int length = byte < 0x80           ? 1
               : (byte >> 5) == 0x6  ? 2
               : (byte >> 4) == 0xE  ? 3
               : (byte >> 3) == 0x1E ? 4
                                     : 0;
  if (length <= 1 || pos + length > text.size()) {
    ++pos;
    return byte;
  }
  char32_t cp = byte & (0xFF >> (length + 1));
  for (int k = 1; k < length; ++k) {
    auto next = static_cast<unsigned char>(text[pos + k]);
    if ((next & 0xC0) != 0x80) {
      ++pos;
      return byte;
    }
    cp = (cp << 6) | (next & 0x3F);
  }
  pos += length;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::vector<size_t> code_point_offsets(std::string_view text) {
  std::vector<size_t> offsets;
  offsets.reserve(text.size() + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    offsets.push_back(pos);
    decode_code_point(text, pos);
  }
  offsets.push_back(text.size());
  return offsets;
}

size_t code_point_count(std::string_view text) {
  size_t count = 0;
  for (size_t pos = 0; pos < text.size(); ++count) decode_code_point(text, pos);
  return count;
}

bool is_python_space(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string strip_chars(std::string_view text, const std::string* chars, bool left, bool right) {
  std::vector<char32_t> set;
  if (chars)
    for (size_t pos = 0; pos < chars->size();) set.push_back(decode_code_point(*chars, pos));
  auto strippable = [&](char32_t cp) {
    return chars ? std::find(set.begin(), set.end(), cp) != set.end() : is_python_space(cp);
  };
  auto offsets = code_point_offsets(text);
  size_t first = 0, last = offsets.size() - 1;  // code point indices [first, last)
  auto cp_at = [&](size_t index) {
    size_t pos = offsets[index];
    return decode_code_point(text, pos);
  };
  if (left)
    while (first < last && strippable(cp_at(first))) ++first;
  if (right)
    while (last > first && strippable(cp_at(last - 1))) --last;
  return std::string(text.substr(offsets[first], offsets[last] - offsets[first]));
}

namespace {
template <typename Map>
std::string map_code_points(std::string_view text, Map map) {
  std::string out;
  out.reserve(text.size());
  size_t index = 0;
  for (size_t pos = 0; pos < text.size(); ++index) append_utf8(out, map(decode_code_point(text, pos), index));
  return out;
}
char32_t lower(char32_t cp) {
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
}
char32_t upper(char32_t cp) {
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(cp)));
}
}  // namespace

std::string to_lower(std::string_view text) {
  return map_code_points(text, [](char32_t cp, size_t) { return lower(cp); });
}
std::string to_upper(std::string_view text) {
  return map_code_points(text, [](char32_t cp, size_t) { return upper(cp); });
}
std::string capitalize(std::string_view text) {
  return map_code_points(text, [](char32_t cp, size_t index) { return index == 0 ? upper(cp) : lower(cp); });
}
std::string title_case(std::string_view text) {
  // Jinja's title: a word starts after whitespace, '-', '(', '{', '[' or '<'... approximated by
  // Python's str.title(): after any non-letter.
  bool previous_cased = false;
  return map_code_points(text, [&](char32_t cp, size_t) {
    auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
    bool cased = category == UTF8PROC_CATEGORY_LU || category == UTF8PROC_CATEGORY_LL ||
                 category == UTF8PROC_CATEGORY_LT;
    char32_t mapped = cased ? (previous_cased ? lower(cp) : upper(cp)) : cp;
    previous_cased = cased;
    return mapped;
  });
}

}  // namespace tandem::jinja
