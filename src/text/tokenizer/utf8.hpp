#pragma once
// UTF-8 structure helpers (no character tables: only the encoding's byte patterns).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::text {

// Byte offset of the first invalid or incomplete sequence, or npos when `s` is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);

// `bytes` as valid UTF-8: each maximal invalid subpart becomes U+FFFD (as Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

// Decodes the code point starting at s[i] (s must be valid UTF-8); advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);

void append_utf8(std::string& out, char32_t cp);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

}  // namespace tandem::text
