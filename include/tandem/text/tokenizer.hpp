#pragma once
// Byte-level BPE tokenizer with HF tokenizer.json semantics (normalizer, pre-tokenizers, added
// tokens, post-processor, decoder), loaded from tokenizer.json or from a GGUF vocabulary.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

class GgufFile;

class Tokenizer {
 public:
  // `path`: a folder with tokenizer.json, a tokenizer.json file, or a GGUF file.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
  static std::unique_ptr<Tokenizer> from_json(std::string_view tokenizer_json);
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& gguf);
  virtual ~Tokenizer() = default;

  // add_special = HF add_special_tokens (BOS etc. from the post-processor).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = true) const = 0;
  // skip_special = HF skip_special_tokens.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  virtual std::string token_text(int32_t id) const = 0;  // the raw vocabulary entry
  virtual int32_t token_id(std::string_view token) const = 0;  // -1 when absent
  virtual bool is_special(int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

// Streaming detokenisation: feed ids one at a time, get only complete UTF-8 text back.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);  // text that became complete with this token (maybe empty)
  std::string flush();           // whatever is left, invalid bytes as U+FFFD
  void reset();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t emitted_bytes_ = 0;
};

}  // namespace tandem
