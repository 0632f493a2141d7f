#include "text/tokenizer/byte_level.hpp"

#include <array>

#include "text/tokenizer/utf8.hpp"

namespace tandem::text {
namespace {

bool shown_as_itself(unsigned b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_text;
  std::array<int, 512> code_point_to_byte;  // -1: not in the alphabet
  ByteLevelTables() {
    code_point_to_byte.fill(-1);
    unsigned next_extra = 256;
    for (unsigned b = 0; b < 256; ++b) {
      const char32_t cp = shown_as_itself(b) ? b : next_extra++;
      append_utf8(byte_to_text[b], cp);
      code_point_to_byte[cp] = static_cast<int>(b);
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace

const std::string& byte_level_char(unsigned char byte) { return tables().byte_to_text[byte]; }

bool byte_level_to_bytes(std::string_view text, std::string& bytes) {
  const auto& t = tables();
  bytes.clear();
  size_t i = 0;
  while (i < text.size()) {
    const char32_t cp = next_code_point(text, i);
    if (cp >= t.code_point_to_byte.size() || t.code_point_to_byte[cp] < 0) return false;
    bytes.push_back(static_cast<char>(t.code_point_to_byte[cp]));
  }
  return true;
}

}  // namespace tandem::text
