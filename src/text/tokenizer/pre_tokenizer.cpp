#include "text/tokenizer/pre_tokenizer.hpp"

#include <nlohmann/json.hpp>

#include "tandem/error.hpp"
#include "text/tokenizer/regex.hpp"

namespace tandem::text {
namespace {

// GPT-2's pattern, used by ByteLevel with use_regex.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

SplitBehavior parse_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::removed;
  if (name == "Isolated") return SplitBehavior::isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (name == "Contiguous") return SplitBehavior::contiguous;
  throw Error(ErrorKind::unsupported, "tokenizer.json: Split behavior '" + name + "' is unknown");
}

struct Span {
  size_t begin, end;
  bool is_match;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const std::string& pattern, bool literal, SplitBehavior behavior, bool invert)
      : regex_(pattern, literal), behavior_(behavior), invert_(invert) {}

  void split(PieceList& list) const override {
    std::vector<std::string_view> out;
    out.reserve(list.pieces.size() * 2);
    std::vector<Span> spans;
    RegexMatch match;
    for (std::string_view piece : list.pieces) {
      spans.clear();
      find_spans(piece, match, spans);
      apply_behavior(spans);
      for (const Span& s : spans)
        if (s.end > s.begin && !(behavior_ == SplitBehavior::removed && s.is_match))
          out.push_back(piece.substr(s.begin, s.end - s.begin));
    }
    list.pieces.swap(out);
  }

 private:
  void find_spans(std::string_view piece, RegexMatch& match, std::vector<Span>& spans) const {
    size_t pos = 0, begin = 0, end = 0;
    while (pos < piece.size() && regex_.find(piece, pos, match, begin, end)) {
      if (end == begin) {  // an empty match splits nothing; look again one character on
        size_t next = begin + 1;
        while (next < piece.size() && (static_cast<unsigned char>(piece[next]) & 0xC0) == 0x80)
          ++next;
        if (begin > pos) spans.push_back({pos, begin, invert_});
        spans.push_back({begin, next, invert_});
        pos = next;
        continue;
      }
      if (begin > pos) spans.push_back({pos, begin, invert_});
      spans.push_back({begin, end, !invert_});
      pos = end;
    }
    if (pos < piece.size()) spans.push_back({pos, piece.size(), invert_});
  }

  void apply_behavior(std::vector<Span>& spans) const {
    std::vector<Span> merged;
    bool previous_match = false;
    switch (behavior_) {
      case SplitBehavior::removed:
      case SplitBehavior::isolated:
        return;
      case SplitBehavior::merged_with_previous:
        for (const Span& s : spans) {
          if (s.is_match && !previous_match && !merged.empty())
            merged.back().end = s.end;
          else
            merged.push_back(s);
          previous_match = s.is_match;
        }
        break;
      case SplitBehavior::merged_with_next:
        for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
          if (it->is_match && !previous_match && !merged.empty())
            merged.back().begin = it->begin;
          else
            merged.push_back(*it);
          previous_match = it->is_match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      case SplitBehavior::contiguous:
        for (size_t i = 0; i < spans.size(); ++i) {
          if (i > 0 && spans[i].is_match == previous_match)
            merged.back().end = spans[i].end;
          else
            merged.push_back(spans[i]);
          previous_match = spans[i].is_match;
        }
        break;
    }
    spans.swap(merged);
  }

  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex)
      regex_split_ = std::make_unique<SplitPreTokenizer>(kGpt2Pattern, false,
                                                         SplitBehavior::isolated, false);
  }
  void split(PieceList& list) const override {
    // The byte-to-character mapping itself is folded into the BPE vocabulary (raw bytes).
    if (add_prefix_space_)
      for (auto& piece : list.pieces)
        if (!piece.empty() && piece.front() != ' ') piece = list.own(" " + std::string(piece));
    if (regex_split_) regex_split_->split(list);
  }
  bool is_byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<SplitPreTokenizer> regex_split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void split(PieceList& list) const override {
    for (const auto& step : steps_) step->split(list);
  }
  bool is_byte_level() const override {
    for (const auto& step : steps_)
      if (step->is_byte_level()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_isolating_regex_split(const std::string& pattern) {
  return std::make_unique<SplitPreTokenizer>(pattern, false, SplitBehavior::isolated, false);
}

std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) {
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}

std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, use_regex);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  if (type == "Split") {
    const auto& pattern = spec.at("pattern");
    const bool literal = pattern.contains("String");
    const std::string text =
        literal ? pattern.at("String").get<std::string>() : pattern.at("Regex").get<std::string>();
    return std::make_unique<SplitPreTokenizer>(text, literal,
                                               parse_behavior(spec.at("behavior").get<std::string>()),
                                               spec.value("invert", false));
  }
  if (type == "ByteLevel")
    return make_byte_level(spec.value("add_prefix_space", true), spec.value("use_regex", true));
  if (type == "Digits") {
    // Rust's char::is_numeric is the Unicode N categories, as PCRE2's \p{N}.
    const bool individual = spec.value("individual_digits", false);
    return std::make_unique<SplitPreTokenizer>(individual ? R"(\p{N})" : R"(\p{N}+)", false,
                                               SplitBehavior::isolated, false);
  }
  if (type == "Whitespace")
    return std::make_unique<SplitPreTokenizer>(R"(\w+|[^\w\s]+)", false, SplitBehavior::removed,
                                               true);
  if (type == "WhitespaceSplit")
    return std::make_unique<SplitPreTokenizer>(R"(\s+)", false, SplitBehavior::removed, false);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& step : spec.at("pretokenizers"))
      if (auto p = make_pre_tokenizer(step)) steps.push_back(std::move(p));
    return make_sequence(std::move(steps));
  }
  throw Error(ErrorKind::unsupported,
              "tokenizer.json: pre_tokenizer type '" + type +
                  "' is not supported (supported: Split, ByteLevel, Digits, Whitespace, "
                  "WhitespaceSplit, Sequence)");
}

}  // namespace tandem::text
