// tokenizer.json components on small hand-made tokenizers, against the behaviour HF tokenizers
// documents for them (e.g. Split's "the-final--countdown" table in its docstring).
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "tandem/error.hpp"
#include "tandem/text/tokenizer.hpp"

using nlohmann::json;
using tandem::Tokenizer;

namespace {

// A character-level BPE with `ignore_merges`, so every pre-tokenized piece that is itself in the
// vocabulary comes out as one token and any other piece falls apart into characters.
json word_vocab_tokenizer(const std::vector<std::string>& words) {
  json vocab = json::object();
  for (const auto& w : words) vocab[w] = static_cast<int>(vocab.size());
  return {{"normalizer", nullptr},     {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
          {"decoder", nullptr},        {"added_tokens", json::array()},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"ignore_merges", true}}}};
}

std::vector<std::string> pieces(const Tokenizer& tok, const std::string& text, bool add_special = false) {
  std::vector<std::string> out;
  for (int32_t id : tok.encode(text, add_special)) out.push_back(tok.token_text(id));
  return out;
}

using Pieces = std::vector<std::string>;

}  // namespace

TEST_CASE("Split behaviors follow HF's documented example", "[tokenizer][components]") {
  auto spec = word_vocab_tokenizer({"t", "h", "e", "f", "i", "n", "a", "l", "c", "o", "u", "w", "-", "the", "final",
                                    "countdown", "--", "the-", "final-", "-final", "-countdown"});
  const std::string text = "the-final--countdown";
  const std::vector<std::pair<std::string, Pieces>> expected = {
      {"Removed", {"the", "final", "countdown"}},
      {"Isolated", {"the", "-", "final", "-", "-", "countdown"}},
      {"MergedWithPrevious", {"the-", "final-", "-", "countdown"}},
      {"MergedWithNext", {"the", "-final", "-", "-countdown"}},
      {"Contiguous", {"the", "-", "final", "--", "countdown"}},
  };
  for (const auto& [behavior, want] : expected) {
    INFO(behavior);
    spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}};
    CHECK(pieces(*Tokenizer::from_json(spec.dump()), text) == want);
  }
  // invert: the pattern describes the pieces to keep.
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "[a-z]+"}}}, {"behavior", "Removed"}, {"invert", true}};
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), text) == Pieces{"the", "final", "countdown"});
}

TEST_CASE("Digits pre-tokenizer, NFKC normalizer and Sequence", "[tokenizer][components]") {
  auto spec = word_vocab_tokenizer({"a", "1", "2", "3", "123", "f", "i", "fi"});
  spec["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "a123") == Pieces{"a", "1", "2", "3"});
  spec["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", false}};
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "a123") == Pieces{"a", "123"});
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}};
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "\xEF\xAC\x81") == Pieces{"fi"});  // U+FB01 ligature
}

TEST_CASE("added tokens: lstrip, rstrip, single_word, normalized", "[tokenizer][components]") {
  auto spec = word_vocab_tokenizer({"a", "b", " ", " b", "a "});
  spec["added_tokens"] = {{{"id", 5}, {"content", "<mask>"}, {"lstrip", true}, {"rstrip", false},
                           {"normalized", false}, {"special", true}, {"single_word", false}}};
  // Roberta's <mask>: the space before it belongs to the token.
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "a <mask> b") == Pieces{"a", "<mask>", " b"});
  spec["added_tokens"][0]["lstrip"] = false;
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "a <mask> b") == Pieces{"a ", "<mask>", " b"});
  spec["added_tokens"][0]["rstrip"] = true;
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "a <mask> b") == Pieces{"a ", "<mask>", "b"});
  spec["added_tokens"][0]["rstrip"] = false;
  spec["added_tokens"][0]["single_word"] = true;
  const auto tok = Tokenizer::from_json(spec.dump());
  CHECK(tok->encode("a<mask>", false) == std::vector<int32_t>{0, 0});  // no match: only the 'a's are in the vocabulary
  CHECK(tok->encode("a <mask>", false) == std::vector<int32_t>{4, 5});
  // normalized = true: matched after the normalizer ran (here: Lowercase).
  spec["normalizer"] = {{"type", "Lowercase"}};
  spec["added_tokens"][0] = {{"id", 5}, {"content", "<mask>"}, {"lstrip", false}, {"rstrip", false},
                             {"normalized", true}, {"special", false}, {"single_word", false}};
  CHECK(pieces(*Tokenizer::from_json(spec.dump()), "A<MASK>") == Pieces{"a", "<mask>"});
}

TEST_CASE("TemplateProcessing adds BOS only with add_special", "[tokenizer][components]") {
  auto spec = word_vocab_tokenizer({"a", "<s>", "</s>"});
  spec["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}},
                          {"</s>", {{"id", "</s>"}, {"ids", {2}}, {"tokens", {"</s>"}}}}}}};
  const auto tok = Tokenizer::from_json(spec.dump());
  CHECK(tok->encode("a", true) == std::vector<int32_t>{1, 0, 2});
  CHECK(tok->encode("a", false) == std::vector<int32_t>{0});
  CHECK(tok->bos_id() == 1);
}

TEST_CASE("byte_fallback encodes unknown characters as bytes; ByteFallback decodes them", "[tokenizer][components]") {
  json vocab = {{"a", 0}, {"<0xE5>", 1}, {"<0x8C>", 2}, {"<0x97>", 3}};
  json spec = {{"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
               {"added_tokens", json::array()},
               {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}},
               {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"byte_fallback", true}}}};
  const auto tok = Tokenizer::from_json(spec.dump());
  CHECK(tok->encode("a\xE5\x8C\x97", false) == std::vector<int32_t>{0, 1, 2, 3});  // "a北"
  CHECK(tok->decode({0, 1, 2, 3}) == "a\xE5\x8C\x97");
  CHECK(tok->decode({1, 0}) == "\xEF\xBF\xBD" "a");  // a lone lead byte: one U+FFFD per byte
}

TEST_CASE("merges in both the string and the pair form give the same ids", "[tokenizer][components]") {
  json spec = {{"normalizer", nullptr}, {"post_processor", nullptr}, {"added_tokens", json::array()},
               {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
               {"decoder", {{"type", "ByteLevel"}}},
               {"model", {{"type", "BPE"},
                          {"vocab", {{"\xC4\xA0", 0}, {"h", 1}, {"i", 2}, {"hi", 3}, {"\xC4\xA0hi", 4}}},
                          {"merges", json::array({"h i", "\xC4\xA0 hi"})}}}};
  const auto strings = Tokenizer::from_json(spec.dump());
  spec["model"]["merges"] = json::array({json::array({"h", "i"}), json::array({"\xC4\xA0", "hi"})});
  const auto pairs = Tokenizer::from_json(spec.dump());
  // add_prefix_space: "hi" is seen as " hi" (Ġhi).
  CHECK(strings->encode("hi", false) == std::vector<int32_t>{4});
  CHECK(pairs->encode("hi hi", false) == std::vector<int32_t>{4, 4});
  CHECK(pairs->decode({4, 4}) == " hi hi");
}
