#include "tandem/text/token_text_stream.hpp"

#include <algorithm>
#include <string_view>

#include "tandem/error.hpp"

namespace tandem {

TokenTextStream::TokenTextStream(const Tokenizer* tokenizer, bool skip_special,
                                 std::vector<std::string> stops)
    : stops_(std::move(stops)) {
  for (const auto& s : stops_)
    if (s.empty()) throw Error(ErrorKind::invalid_argument, "an empty stop string");
  if (!tokenizer && !stops_.empty())
    throw Error(ErrorKind::invalid_argument, "stop strings need a tokenizer, and the model has none");
  if (tokenizer) decoder_.emplace(*tokenizer, skip_special);
}

size_t TokenTextStream::held_back() const {
  size_t longest = 0;
  const std::string_view text = pending_;
  for (const auto& s : stops_)
    for (size_t k = std::min(text.size(), s.size() - 1); k > longest; --k)
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        longest = k;
        break;
      }
  return longest;
}

std::string TokenTextStream::take_ready(bool& stopped, bool at_end) {
  size_t first_stop = std::string::npos;
  for (const auto& s : stops_) first_stop = std::min(first_stop, pending_.find(s));
  std::string out;
  if (first_stop != std::string::npos) {
    out = pending_.substr(0, first_stop);
    pending_.clear();
    stopped_ = stopped = true;
    return out;
  }
  const size_t ready = at_end ? pending_.size() : pending_.size() - held_back();
  out = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return out;
}

std::string TokenTextStream::push(int32_t id, bool& stopped) {
  stopped = stopped_;
  if (stopped_ || !decoder_) return {};
  pending_ += decoder_->push(id);
  return take_ready(stopped, false);
}

std::string TokenTextStream::flush(bool& stopped) {
  stopped = stopped_;
  if (stopped_ || !decoder_) return {};
  pending_ += decoder_->flush();
  return take_ready(stopped, true);
}

}  // namespace tandem
