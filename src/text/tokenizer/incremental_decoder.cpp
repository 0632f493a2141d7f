// IncrementalDecoder: re-decodes a short window of recent ids and emits only text that can no
// longer change, i.e. text that does not end in an incomplete UTF-8 sequence.
#include "tandem/text/tokenizer.hpp"
#include "text/tokenizer/utf8.hpp"

namespace tandem {
namespace {

constexpr size_t kWindowKeep = 4;   // ids kept as context when the window is trimmed
constexpr size_t kWindowLimit = 16;

bool ends_with_replacement(const std::string& text) {
  const auto r = text::kReplacementChar;
  return text.size() >= r.size() && text.compare(text.size() - r.size(), r.size(), r) == 0;
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special)
    : tok_(&tok), skip_special_(skip_special) {}

std::string IncrementalDecoder::push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tok_->decode(ids_, skip_special_);
  // A trailing U+FFFD may be the start of a character whose other bytes are still to come.
  if (ends_with_replacement(text) || text.size() <= emitted_bytes_) return {};
  std::string fresh = text.substr(emitted_bytes_);
  emitted_bytes_ = text.size();
  if (ids_.size() > kWindowLimit) {
    // Keep a few ids as context; trim only when they decode to exactly the tail already emitted.
    const std::vector<int32_t> kept(ids_.end() - kWindowKeep, ids_.end());
    const std::string kept_text = tok_->decode(kept, skip_special_);
    if (kept_text.size() <= text.size() &&
        text.compare(text.size() - kept_text.size(), kept_text.size(), kept_text) == 0) {
      ids_ = kept;
      emitted_bytes_ = kept_text.size();
    }
  }
  return fresh;
}

std::string IncrementalDecoder::flush() {
  std::string rest;
  if (!ids_.empty()) {
    const std::string text = tok_->decode(ids_, skip_special_);
    if (text.size() > emitted_bytes_) rest = text.substr(emitted_bytes_);
  }
  reset();
  return rest;
}

void IncrementalDecoder::reset() {
  ids_.clear();
  emitted_bytes_ = 0;
}

}  // namespace tandem
