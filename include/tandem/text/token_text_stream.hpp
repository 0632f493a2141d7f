#pragma once
// Sampled ids → the text a client may see, one token at a time: complete UTF-8 only, and text that
// could still grow into a stop string held back, so a stop string never reaches the client even
// when it spans tokens. The scheduler keeps one per sequence.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tandem/text/tokenizer.hpp"

namespace tandem {

class TokenTextStream {
 public:
  // `tokenizer` may be null: no text is produced, and `stops` must then be empty (Error(invalid_argument),
  // as for an empty stop string).
  TokenTextStream(const Tokenizer* tokenizer, bool skip_special, std::vector<std::string> stops);

  // The text that became final with `id`. When a stop string appears, returns the text before it
  // and sets `stopped`; the stream then yields nothing more.
  std::string push(int32_t id, bool& stopped);
  // What was held back, at the end of generation (cut before a stop string, setting `stopped`).
  std::string flush(bool& stopped);

 private:
  size_t held_back() const;  // longest suffix of pending_ that is a proper prefix of a stop string
  std::string take_ready(bool& stopped, bool at_end);

  std::optional<IncrementalDecoder> decoder_;
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace tandem
