#pragma once
// HF decoders: turn the vocabulary entries of a token sequence back into text. ByteLevel,
// ByteFallback, Fuse, Strip, Replace, Metaspace and Sequence.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tandem::text {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// nullptr for JSON null (the tokens are then joined with spaces, as HF does).
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec);
std::unique_ptr<Decoder> make_byte_level_decoder();

}  // namespace tandem::text
