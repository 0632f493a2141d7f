#include "text/tokenizer/utf8.hpp"

namespace tandem::text {
namespace {

// Length of the longest valid prefix of a sequence starting at s[i] (0 if the lead is invalid),
// and whether the sequence is complete.
struct SequenceCheck {
  size_t valid_bytes;
  bool complete;
};

SequenceCheck check_sequence(std::string_view s, size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return {1, true};
  size_t continuation = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation = 1;
  } else if (lead == 0xE0) {
    continuation = 2, lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    continuation = 2;
  } else if (lead == 0xED) {
    continuation = 2, hi = 0x9F;
  } else if (lead == 0xF0) {
    continuation = 3, lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    continuation = 3;
  } else if (lead == 0xF4) {
    continuation = 3, hi = 0x8F;
  } else {
    return {0, false};
  }
  size_t j = i + 1;
  for (size_t k = 0; k < continuation; ++k, ++j) {
    if (j >= s.size()) return {j - i, false};
    const auto c = static_cast<unsigned char>(s[j]);
    const unsigned char low = k == 0 ? lo : 0x80, high = k == 0 ? hi : 0xBF;
    if (c < low || c > high) return {j - i, false};
  }
  return {j - i, true};
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const auto check = check_sequence(s, i);
    if (!check.complete) return i;
    i += check.valid_bytes;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const auto check = check_sequence(bytes, i);
    if (check.complete) {
      out.append(bytes.substr(i, check.valid_bytes));
      i += check.valid_bytes;
    } else {
      out.append(kReplacementChar);
      i += check.valid_bytes == 0 ? 1 : check.valid_bytes;
    }
  }
  return out;
}

char32_t next_code_point(std::string_view s, size_t& i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) {
    ++i;
    return lead;
  }
  size_t extra = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
  char32_t cp = lead & (0x3F >> extra);
  ++i;
  for (size_t k = 0; k < extra && i < s.size(); ++k, ++i)
    cp = (cp << 6) | (static_cast<unsigned char>(s[i]) & 0x3F);
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace tandem::text
