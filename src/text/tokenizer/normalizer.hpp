#pragma once
// HF tokenizer.json normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Lowercase, Replace, Prepend,
// Strip and Sequence. Applied to each stretch of text between added tokens.
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace tandem::text {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// nullptr for a JSON null (no normalizer). Throws Error(unsupported) naming an unknown type.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec);

}  // namespace tandem::text
