// Tokenizer against external references: HF tokenizers' golden ids for the real Qwen3 and
// DeepSeek-V3 tokenizers, the tiny models' manifest ids (from HF), and each GGUF's embedded
// vocabulary against the HF tokenizer.json beside it.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/text/tokenizer.hpp"

namespace fs = std::filesystem;
using tandem::Tokenizer;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

// Independent of our decoder: the standard's rules for well-formed UTF-8 (Unicode table 3-7).
bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : b & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

void check_incremental(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& name) {
  tandem::IncrementalDecoder stream(tok);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    INFO(name << ": piece after id " << id);
    CHECK(is_valid_utf8(piece));
    streamed += piece;
  }
  streamed += stream.flush();
  CHECK(streamed == tok.decode(ids));
}

std::vector<std::string> manifest_texts() {
  std::vector<std::string> texts;
  const auto manifest = read_json(tandem::test::data_dir() + "/tiny-manifest.json");
  for (const auto& prompt : manifest.at("tokenizer").at("prompts")) texts.push_back(prompt.at("text"));
  return texts;
}

}  // namespace

TEST_CASE("tiny tokenizer.json gives the manifest's prompt ids", "[tokenizer]") {
  const std::string dir = tandem::test::data_dir();
  const auto manifest = read_json(dir + "/tiny-manifest.json");
  const auto tok = Tokenizer::load(dir + "/tiny-qwen3moe");
  CHECK(tok->vocab_size() == manifest.at("tokenizer").at("vocab").get<int64_t>());
  CHECK(tok->eos_id() == tok->token_id("<|im_end|>"));  // from tokenizer_config.json
  for (const auto& prompt : manifest.at("tokenizer").at("prompts")) {
    const std::string text = prompt.at("text");
    INFO(text);
    CHECK(tok->encode(text, false) == ids_of(prompt.at("ids")));
    CHECK(tok->encode(text, true) == ids_of(prompt.at("ids")));  // no template specials
    CHECK(tok->decode(ids_of(prompt.at("ids"))) == text);
    check_incremental(*tok, ids_of(prompt.at("ids")), text);
  }
  const auto& chat = manifest.at("tokenizer").at("chat_example");
  CHECK(tok->encode(chat.at("rendered").get<std::string>()) == ids_of(chat.at("ids")));
}

TEST_CASE("tiny GGUF vocabularies give the manifest's prompt ids", "[tokenizer][gguf]") {
  const std::string dir = tandem::test::data_dir();
  const auto manifest = read_json(dir + "/tiny-manifest.json");
  for (const char* file : {"/tiny-qwen3moe/qwen3moe-q8_0.gguf", "/tiny-deepseekv3/deepseekv3-q8_0.gguf"}) {
    INFO(file);
    const auto tok = Tokenizer::load(dir + file);
    CHECK(tok->vocab_size() == 512);
    CHECK(tok->eos_id() == 511);
    for (const auto& prompt : manifest.at("tokenizer").at("prompts")) {
      INFO(prompt.at("text").get<std::string>());
      // The files carry no add_bos_token, so no BOS in either mode (as llama.cpp).
      CHECK(tok->encode(prompt.at("text").get<std::string>(), true) == ids_of(prompt.at("ids")));
      CHECK(tok->decode(ids_of(prompt.at("ids"))) == prompt.at("text").get<std::string>());
    }
    const auto& chat = manifest.at("tokenizer").at("chat_example");
    CHECK(tok->encode(chat.at("rendered").get<std::string>()) == ids_of(chat.at("ids")));
  }
}

TEST_CASE("fixture GGUF vocabularies match the HF tokenizer.json beside them", "[tokenizer][gguf][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const auto golden = read_json(fx + "/tokenizers/golden.json");
  std::vector<std::string> texts = manifest_texts();
  for (const auto& c : golden.at("qwen3").at("cases")) texts.push_back(c.at("text"));
  int checked_files = 0;
  for (const char* group : {"/tiny", "/small"}) {
    for (const auto& model_dir : fs::directory_iterator(fx + group)) {
      if (!model_dir.is_directory()) continue;
      for (const auto& entry : fs::directory_iterator(model_dir.path())) {
        if (entry.path().extension() != ".gguf") continue;
        INFO(entry.path().string());
        const auto hf = Tokenizer::load(model_dir.path().string());
        const auto gguf = Tokenizer::load(entry.path().string());
        CHECK(gguf->vocab_size() == hf->vocab_size());
        for (const auto& text : texts) {
          INFO(text);
          CHECK(gguf->encode(text, false) == hf->encode(text, false));
        }
        ++checked_files;
      }
    }
  }
  CHECK(checked_files >= 9);
}

TEST_CASE("real Qwen3 and DeepSeek-V3 tokenizers match HF tokenizers' golden ids", "[tokenizer][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const auto golden = read_json(fx + "/tokenizers/golden.json");
  for (const char* name : {"qwen3", "deepseek_v3"}) {
    INFO(name);
    const auto tok = Tokenizer::load(fx + "/tokenizers/" + name);
    const auto& expected = golden.at(name);
    CHECK(tok->vocab_size() == expected.at("vocab_size").get<int64_t>());
    int mismatches = 0;
    for (const auto& c : expected.at("cases")) {
      const std::string text = c.at("text");
      INFO(text);
      const auto ids = ids_of(c.at("ids"));
      const auto ids_no_special = tok->encode(text, false);
      const auto ids_with_special = tok->encode(text, true);
      CHECK(ids_no_special == ids);
      CHECK(ids_with_special == ids_of(c.at("ids_with_special")));
      CHECK(tok->decode(ids) == c.at("decoded").get<std::string>());
      check_incremental(*tok, ids, text);
      mismatches += ids_no_special != ids;
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("tokenizer errors name what is wrong", "[tokenizer][errors]") {
  using tandem::Error;
  using tandem::ErrorKind;
  const auto minimal = [](const std::string& model) {
    return R"({"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},)"
           R"("post_processor":null,"decoder":{"type":"ByteLevel"},"added_tokens":[],"model":)" + model + "}";
  };
  CHECK_THROWS_WITH(Tokenizer::from_json(minimal(R"({"type":"WordPiece","vocab":{}})")),
                    Catch::Contains("WordPiece"));
  CHECK_THROWS_WITH(Tokenizer::from_json(minimal(R"({"type":"BPE","vocab":{"a":0},"merges":["a b"]})")),
                    Catch::Contains("a b"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"pre_tokenizer":{"type":"Metaspace"},"model":{"vocab":{}}})"),
                    Catch::Contains("Metaspace"));
  CHECK_THROWS_AS(Tokenizer::from_json("{not json"), Error);
  CHECK_THROWS_AS(Tokenizer::load("/nonexistent/tokenizer"), Error);
  const auto tok = Tokenizer::load(tandem::test::data_dir() + "/tiny-qwen3moe");
  CHECK_THROWS_WITH(tok->encode(std::string("ab\xC3", 3)), Catch::Contains("UTF-8"));
  // Unknown ids are skipped in decoding (as HF does), never read out of bounds.
  CHECK(tok->decode({-5, 1 << 30}) == "");
}

TEST_CASE("incremental decoding holds back split characters and flushes U+FFFD", "[tokenizer]") {
  const auto tok = Tokenizer::load(tandem::test::data_dir() + "/tiny-qwen3moe");
  // The tiny vocabulary splits '北' (E5 8C 97) into single-byte tokens.
  const auto ids = tok->encode("北");
  REQUIRE(ids.size() == 3);
  tandem::IncrementalDecoder stream(*tok);
  CHECK(stream.push(ids[0]).empty());
  CHECK(stream.push(ids[1]).empty());
  CHECK(stream.push(ids[2]) == "北");
  CHECK(stream.push(ids[0]).empty());
  CHECK(stream.flush() == "\xEF\xBF\xBD");
}

// GGUF vocabularies written by the formats tests' writer (independent of the reader), reusing the
// tiny model's vocabulary under every supported `tokenizer.ggml.pre`.
#include "formats/gguf_test_writer.hpp"

namespace {

std::vector<uint8_t> tiny_vocab_gguf(const std::string& model, const std::string& pre, bool add_bos) {
  const auto hf = read_json(tandem::test::data_dir() + "/tiny-qwen3moe/tokenizer.json");
  std::vector<std::string> tokens(512);
  for (const auto& [text, id] : hf.at("model").at("vocab").items()) tokens.at(id.get<size_t>()) = text;
  for (const auto& added : hf.at("added_tokens")) tokens.at(added.at("id").get<size_t>()) = added.at("content");
  std::vector<std::string> merges;
  for (const auto& m : hf.at("model").at("merges")) merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
  tandem::test::GgufTestWriter writer;
  writer.kv_string("general.architecture", "qwen3moe");
  writer.kv_string("tokenizer.ggml.model", model);
  writer.kv_string("tokenizer.ggml.pre", pre);
  writer.kv_string_array("tokenizer.ggml.tokens", tokens);
  writer.kv_string_array("tokenizer.ggml.merges", merges);
  writer.kv_u32("tokenizer.ggml.bos_token_id", 509);
  writer.kv_bool("tokenizer.ggml.add_bos_token", add_bos);
  return writer.bytes();
}

}  // namespace

TEST_CASE("every supported GGUF pre-tokenizer name loads and round-trips text", "[tokenizer][gguf]") {
  for (const char* pre : {"qwen2", "deepseek-v3", "deepseek-llm", "deepseek-coder", "llama3", "llama-bpe", "gpt-2"}) {
    INFO(pre);
    const auto bytes = tiny_vocab_gguf("gpt2", pre, true);
    const auto gguf = tandem::GgufFile::from_memory(bytes.data(), bytes.size(), "vocab.gguf");
    const auto tok = Tokenizer::from_gguf(gguf);
    for (const auto& text : manifest_texts()) {
      INFO(text);
      const auto ids = tok->encode(text, true);
      REQUIRE(!ids.empty());
      CHECK(ids.front() == 509);  // add_bos_token
      CHECK(tok->encode(text, false) == std::vector<int32_t>(ids.begin() + 1, ids.end()));
      CHECK(tok->decode(std::vector<int32_t>(ids.begin() + 1, ids.end())) == text);
    }
  }
  const auto no_bos = tiny_vocab_gguf("gpt2", "qwen2", false);
  const auto tok = Tokenizer::from_gguf(tandem::GgufFile::from_memory(no_bos.data(), no_bos.size(), "vocab.gguf"));
  CHECK(tok->encode("Hi", true) == tok->encode("Hi", false));
  CHECK(tok->bos_id() == 509);

  const auto unknown_pre = tiny_vocab_gguf("gpt2", "no-such-pre", false);
  CHECK_THROWS_WITH(Tokenizer::from_gguf(tandem::GgufFile::from_memory(unknown_pre.data(), unknown_pre.size(), "x.gguf")),
                    Catch::Contains("no-such-pre"));
  const auto spm = tiny_vocab_gguf("llama", "qwen2", false);
  CHECK_THROWS_WITH(Tokenizer::from_gguf(tandem::GgufFile::from_memory(spm.data(), spm.size(), "x.gguf")),
                    Catch::Contains("'llama'"));
}

TEST_CASE("a GGUF vocabulary of millions of empty entries is refused, not held in memory", "[tokenizer][gguf]") {
  tandem::test::GgufTestWriter writer;
  writer.kv_string("general.architecture", "qwen3moe");
  writer.kv_string("tokenizer.ggml.model", "gpt2");
  std::vector<std::string> tokens(size_t{1} << 20);
  tokens[0] = "a";
  writer.kv_string_array("tokenizer.ggml.tokens", tokens);
  const auto bytes = writer.bytes();
  const auto gguf = tandem::GgufFile::from_memory(bytes.data(), bytes.size(), "empties.gguf");
  CHECK_THROWS_WITH(Tokenizer::from_gguf(gguf), Catch::Contains("empties.gguf") &&
                                                    Catch::Contains("1048575 empty entries of 1048576"));
  // A few empty entries (placeholders) are fine.
  const auto few = tiny_vocab_gguf("gpt2", "qwen2", false);
  const auto few_gguf = tandem::GgufFile::from_memory(few.data(), few.size(), "vocab.gguf");
  CHECK_NOTHROW(Tokenizer::from_gguf(few_gguf));
}
