#pragma once
// GPT-2's byte-level alphabet: every byte is shown as a printable code point, so that a
// vocabulary of byte strings can be stored as text. Printable Latin-1 bytes map to themselves,
// the rest to U+0100 onward in byte order.
#include <string>
#include <string_view>

namespace tandem::text {

// The UTF-8 text of the code point that stands for `byte`.
const std::string& byte_level_char(unsigned char byte);

// Maps a byte-level string back to raw bytes; false when a character is outside the alphabet.
bool byte_level_to_bytes(std::string_view text, std::string& bytes);

}  // namespace tandem::text
