#include "text/tokenizer/normalizer.hpp"

#include <cstdlib>
#include <vector>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include "tandem/error.hpp"
#include "text/tokenizer/regex.hpp"
#include "text/tokenizer/utf8.hpp"

namespace tandem::text {
namespace {

bool is_ascii(const std::string& s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

class UnicodeNormalizer final : public Normalizer {
 public:
  UnicodeNormalizer(utf8proc_option_t options, bool ascii_is_fixed_point)
      : options_(options), ascii_is_fixed_point_(ascii_is_fixed_point) {}
  void normalize(std::string& text) const override {
    if (text.empty() || (ascii_is_fixed_point_ && is_ascii(text))) return;
    utf8proc_uint8_t* result = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                static_cast<utf8proc_ssize_t>(text.size()), &result, options_);
    if (n < 0)
      throw Error(ErrorKind::invalid_argument,
                  std::string("tokenizer normalizer: ") + utf8proc_errmsg(n));
    text.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
  }

 private:
  utf8proc_option_t options_;
  bool ascii_is_fixed_point_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size())
      append_utf8(out, static_cast<char32_t>(utf8proc_tolower(
                           static_cast<utf8proc_int32_t>(next_code_point(text, i)))));
    text.swap(out);
  }
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const std::string& pattern, bool literal, std::string content)
      : regex_(pattern, literal), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::string out;
    RegexMatch match;
    size_t pos = 0, begin = 0, end = 0;
    while (pos <= text.size() && regex_.find(text, pos, match, begin, end)) {
      out.append(text, pos, begin - pos);
      out.append(content_);
      if (end == begin) {  // empty match: keep the next character and move on
        if (end >= text.size()) {
          pos = text.size() + 1;
          break;
        }
        size_t next = end;
        next_code_point(text, next);
        out.append(text, end, next - end);
        end = next;
      }
      pos = end;
    }
    if (pos < text.size()) out.append(text, pos, std::string::npos);
    text.swap(out);
  }

 private:
  Regex regex_;
  std::string content_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    auto is_space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
    size_t b = 0, e = text.size();
    if (left_)
      while (b < e && is_space(text[b])) ++b;
    if (right_)
      while (e > b && is_space(text[e - 1])) --e;
    text = text.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  const auto stable = UTF8PROC_STABLE;
  if (type == "NFC")
    return std::make_unique<UnicodeNormalizer>(utf8proc_option_t(stable | UTF8PROC_COMPOSE), true);
  if (type == "NFD")
    return std::make_unique<UnicodeNormalizer>(utf8proc_option_t(stable | UTF8PROC_DECOMPOSE),
                                               true);
  if (type == "NFKC")
    return std::make_unique<UnicodeNormalizer>(
        utf8proc_option_t(stable | UTF8PROC_COMPOSE | UTF8PROC_COMPAT), true);
  if (type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(
        utf8proc_option_t(stable | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT), true);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(spec.at("prepend"));
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(spec.value("strip_left", true),
                                             spec.value("strip_right", true));
  if (type == "Replace") {
    const auto& pattern = spec.at("pattern");
    const bool literal = pattern.contains("String");
    return std::make_unique<ReplaceNormalizer>(
        literal ? pattern.at("String").get<std::string>() : pattern.at("Regex").get<std::string>(),
        literal, spec.at("content").get<std::string>());
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& step : spec.at("normalizers"))
      if (auto n = make_normalizer(step)) steps.push_back(std::move(n));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  throw Error(ErrorKind::unsupported, "tokenizer.json: normalizer type '" + type +
                                          "' is not supported (supported: NFC, NFD, NFKC, NFKD, "
                                          "Lowercase, Prepend, Strip, Replace, Sequence)");
}

}  // namespace tandem::text
