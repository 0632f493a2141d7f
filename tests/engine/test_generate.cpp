// The generation loop, over a scripted Session and a byte-piece Tokenizer: greedy equals a plain
// argmax loop, EOS / stop strings / callback / cancellation / context limits stop it as documented,
// and a session's prefix is reused.
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/text/tokenizer.hpp"

namespace {

using namespace tandem;

constexpr int32_t kVocab = 16;

// Logits as a pure function of the tokens so far; records what it was asked to run.
class ScriptedSession : public Session {
 public:
  using Model = std::function<std::vector<float>(const std::vector<int32_t>&)>;
  explicit ScriptedSession(Model model, int64_t max_context = 1 << 20)
      : model_(std::move(model)), max_context_(max_context) {}

  void prefill(std::span<const int32_t> ids, bool) override {
    if (static_cast<int64_t>(tokens_.size() + ids.size()) > max_context_)
      throw Error(ErrorKind::out_of_range, "context full");
    if (cancel_at_ >= 0 && static_cast<int64_t>(tokens_.size() + ids.size()) > cancel_at_)
      throw Error(ErrorKind::cancelled, "cancelled");
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    prefilled.push_back(static_cast<int64_t>(ids.size()));
    logits_ = model_(tokens_);
  }
  void decode(int32_t id) override { prefill(std::span<const int32_t>(&id, 1), false); }
  std::span<const float> logits() const override { return logits_; }
  std::span<const float> all_logits() const override { return logits_; }
  int64_t position() const override { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const override { return tokens_; }
  void reset() override {
    tokens_.clear();
    ++resets;
  }
  void truncate(int64_t tokens) override {
    if (tokens < 0 || tokens > position()) throw Error(ErrorKind::out_of_range, "truncate past the end");
    tokens_.resize(static_cast<size_t>(tokens));
    truncations.push_back(tokens);
  }
  void cancel() override {}

  std::vector<int64_t> prefilled;  // sizes of each prefill/decode call
  int resets = 0;
  std::vector<int64_t> truncations;  // arguments of each truncate call
  int64_t cancel_at_ = -1;  // throw Error(cancelled) when the cache would pass this many tokens

 private:
  Model model_;
  int64_t max_context_;
  std::vector<int32_t> tokens_;
  std::vector<float> logits_;
};

// Pseudo-random but deterministic logits from the sequence so far.
std::vector<float> hashed_logits(const std::vector<int32_t>& tokens) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : tokens) h = (h ^ static_cast<uint64_t>(t + 7)) * 1099511628211ull;
  std::vector<float> out(kVocab);
  for (int32_t i = 0; i < kVocab; ++i) {
    h = h * 6364136223846793005ull + 1442695040888963407ull;
    out[static_cast<size_t>(i)] = static_cast<float>((h >> 40) % 1000) / 100.0f;
  }
  return out;
}

// Always predicts `script[k]` as the k-th generated token after `prompt_size` tokens.
ScriptedSession::Model scripted(size_t prompt_size, std::vector<int32_t> script) {
  return [prompt_size, script](const std::vector<int32_t>& tokens) {
    std::vector<float> out(kVocab, 0.0f);
    const size_t k = tokens.size() - prompt_size;
    out[static_cast<size_t>(script[std::min(k, script.size() - 1)])] = 10.0f;
    return out;
  };
}

// Each id decodes to a fixed byte string; invalid UTF-8 decodes to U+FFFD as HF does.
class PieceTokenizer : public Tokenizer {
 public:
  explicit PieceTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string bytes;
    for (int32_t id : ids)
      if (!(skip_special && is_special(id))) bytes += pieces_.at(static_cast<size_t>(id));
    std::string out;
    for (size_t i = 0; i < bytes.size();) {
      const auto c = static_cast<unsigned char>(bytes[i]);
      const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      bool ok = len > 0 && i + len <= bytes.size();
      for (size_t j = 1; ok && j < len; ++j) ok = (static_cast<unsigned char>(bytes[i + j]) >> 6) == 2;
      if (ok) {
        out.append(bytes, i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        ++i;
      }
    }
    return out;
  }
  std::string token_text(int32_t id) const override { return pieces_.at(static_cast<size_t>(id)); }
  int32_t token_id(std::string_view) const override { return -1; }
  bool is_special(int32_t id) const override { return id == 15; }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return 15; }

 private:
  std::vector<std::string> pieces_;
};

PieceTokenizer make_tokenizer() {
  return PieceTokenizer(
      {"Hel", "lo", " wor", "ld", "!", "\xE4\xB8", "\xAD", "o", " ", "a", "b", "c", "d", "e", "f", "<eos>"});
}

struct Collected {
  std::vector<int32_t> ids;
  std::vector<std::string> pieces;
  std::string text;
  TokenCallback callback(std::function<bool(size_t)> keep = {}) {
    return [this, keep](int32_t id, std::string_view piece) {
      ids.push_back(id);
      pieces.emplace_back(piece);
      text += piece;
      return keep ? keep(ids.size()) : true;
    };
  }
};

}  // namespace

TEST_CASE("generate: greedy equals a plain argmax loop", "[generate]") {
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  ScriptedSession reference(hashed_logits);
  reference.prefill(prompt, false);
  std::vector<int32_t> expected;
  for (int i = 0; i < 20; ++i) {
    const auto l = reference.logits();
    int32_t best = 0;
    for (int32_t v = 1; v < kVocab; ++v)
      if (l[static_cast<size_t>(v)] > l[static_cast<size_t>(best)]) best = v;
    expected.push_back(best);
    reference.decode(best);
  }

  ScriptedSession session(hashed_logits);
  GenerateOptions options;
  options.max_new_tokens = 20;
  const auto result = generate(session, nullptr, prompt, options);
  CHECK(result.ids == expected);
  CHECK(result.stop == StopReason::max_tokens);
  CHECK(result.stats.prompt_tokens == 5);
  CHECK(result.stats.generated_tokens == 20);
  // The last token is not run: the session holds the prompt and 19 generated tokens, and the
  // decode rate counts those 19 passes, not the 20 ids.
  CHECK(session.position() == 5 + 19);
  CHECK(result.stats.decoded_tokens == 19);
}

TEST_CASE("generate: one new token runs no decode pass and reports no decode rate", "[generate]") {
  ScriptedSession session(scripted(2, {3}));
  GenerateOptions options;
  options.max_new_tokens = 1;
  const std::vector<int32_t> prompt = {9, 10};
  const auto result = generate(session, nullptr, prompt, options);
  CHECK(result.ids.size() == 1);
  CHECK(result.stats.decoded_tokens == 0);
  CHECK(result.stats.decode_tokens_per_second() == 0.0);
}

TEST_CASE("generate: EOS ends generation, is returned as an id, and produces no text", "[generate]") {
  const auto tok = make_tokenizer();
  const std::vector<int32_t> prompt = {9, 10};
  ScriptedSession session(scripted(prompt.size(), {0, 1, 15, 4}));
  GenerateOptions options;
  options.eos_ids = {15};
  Collected got;
  const auto result = generate(session, &tok, prompt, options, got.callback());
  CHECK(result.ids == std::vector<int32_t>{0, 1, 15});
  CHECK(result.stop == StopReason::eos);
  CHECK(result.text == "Hello");
  CHECK(got.text == "Hello");
}

TEST_CASE("generate: a stop string spanning tokens is cut and never emitted", "[generate]") {
  const auto tok = make_tokenizer();
  const std::vector<int32_t> prompt = {9};
  ScriptedSession session(scripted(prompt.size(), {0, 1, 2, 3, 4, 4, 4}));
  GenerateOptions options;
  options.stop_strings = {"o wo", "zzz"};
  Collected got;
  const auto result = generate(session, &tok, prompt, options, got.callback());
  CHECK(result.stop == StopReason::stop_string);
  CHECK(result.text == "Hell");
  CHECK(got.text == "Hell");
  CHECK(result.ids == std::vector<int32_t>{0, 1, 2});
  for (const auto& piece : got.pieces) CHECK(piece.find("o wo") == std::string::npos);

  // A held-back prefix that never completes is released at the end.
  ScriptedSession again(scripted(prompt.size(), {0, 1, 7}));
  options.stop_strings = {"o!"};
  options.max_new_tokens = 3;
  const auto released = generate(again, &tok, prompt, options);
  CHECK(released.stop == StopReason::max_tokens);
  CHECK(released.text == "Helloo");
}

TEST_CASE("generate: UTF-8 split across tokens reaches the callback whole", "[generate]") {
  const auto tok = make_tokenizer();
  const std::vector<int32_t> prompt = {9};
  ScriptedSession session(scripted(prompt.size(), {5, 6, 4}));
  GenerateOptions options;
  options.max_new_tokens = 3;
  Collected got;
  const auto result = generate(session, &tok, prompt, options, got.callback());
  CHECK(result.text == "\xE4\xB8\xAD!");
  REQUIRE(got.pieces.size() >= 3);
  CHECK(got.pieces[0].empty());
  CHECK(got.pieces[1] == "\xE4\xB8\xAD");
}

TEST_CASE("generate: the callback and the cancel flag stop generation", "[generate]") {
  const auto tok = make_tokenizer();
  const std::vector<int32_t> prompt = {9};
  ScriptedSession session(hashed_logits);
  GenerateOptions options;
  options.max_new_tokens = 50;
  Collected got;
  auto result = generate(session, &tok, prompt, options, got.callback([](size_t n) { return n < 4; }));
  CHECK(result.stop == StopReason::callback);
  CHECK(result.ids.size() == 4);

  std::atomic<bool> cancel{false};
  options.cancel = &cancel;
  ScriptedSession other(hashed_logits);
  Collected got2;
  result = generate(other, &tok, prompt, options, got2.callback([&](size_t n) {
    if (n == 6) cancel = true;
    return true;
  }));
  CHECK(result.stop == StopReason::cancelled);
  CHECK(result.ids.size() == 6);

  // Error(cancelled) from inside the session: reported, and the half-written session is reset.
  cancel = false;
  ScriptedSession interrupted(hashed_logits);
  interrupted.cancel_at_ = 4;
  result = generate(interrupted, &tok, prompt, options);
  CHECK(result.stop == StopReason::cancelled);
  CHECK(interrupted.resets >= 1);
  CHECK(interrupted.position() == 0);
}

TEST_CASE("generate: a full context ends generation; an oversized prompt is an error", "[generate]") {
  const std::vector<int32_t> prompt = {1, 2, 3};
  ScriptedSession session(hashed_logits, 8);
  GenerateOptions options;
  options.max_new_tokens = -1;
  const auto result = generate(session, nullptr, prompt, options);
  CHECK(result.stop == StopReason::context_full);
  CHECK(result.ids.size() == 6);  // 5 decoded to fill 8 positions, the 6th sampled from the last
  ScriptedSession tiny(hashed_logits, 2);
  CHECK_THROWS_AS(generate(tiny, nullptr, prompt, options), Error);
  CHECK_THROWS_AS(generate(session, nullptr, std::span<const int32_t>{}, options), Error);
  options.stop_strings = {"x"};
  CHECK_THROWS_AS(generate(session, nullptr, prompt, options), Error);  // stop strings need text
}

TEST_CASE("generate: a session holding a prefix of the prompt prefills only the suffix", "[generate]") {
  ScriptedSession session(hashed_logits);
  GenerateOptions options;
  options.max_new_tokens = 4;
  std::vector<int32_t> prompt = {1, 2, 3};
  const auto first = generate(session, nullptr, prompt, options);
  CHECK(session.prefilled.front() == 3);

  // Next turn: the previous prompt, the reply, then two more tokens.
  prompt.insert(prompt.end(), first.ids.begin(), first.ids.end());
  prompt.insert(prompt.end(), {7, 8});
  session.prefilled.clear();
  const auto second = generate(session, nullptr, prompt, options);
  CHECK(session.resets == 0);
  REQUIRE(!session.prefilled.empty());
  CHECK(session.prefilled.front() == 3);  // the reply's last token + 7, 8
  CHECK(second.stats.prefilled_tokens == 3);
  CHECK(second.stats.prompt_tokens == static_cast<int64_t>(prompt.size()));

  // Same result as a fresh session over the whole prompt.
  ScriptedSession fresh(hashed_logits);
  CHECK(generate(fresh, nullptr, prompt, options).ids == second.ids);

  // A prompt that diverges from what the session holds: reset, prefill all.
  const std::vector<int32_t> other = {4, 4, 4, 4};
  session.prefilled.clear();
  generate(session, nullptr, other, options);
  CHECK(session.resets == 1);
  CHECK(session.prefilled.front() == 4);
}

TEST_CASE("generate: a prompt diverging mid-way keeps the common prefix and prefills the rest", "[generate]") {
  ScriptedSession session(hashed_logits);
  GenerateOptions options;
  options.max_new_tokens = 3;
  const std::vector<int32_t> first = {1, 2, 3, 4, 5, 6};
  (void)generate(session, nullptr, first, options);
  const std::vector<int32_t> edited = {1, 2, 3, 9, 9};
  session.prefilled.clear();
  const auto r = generate(session, nullptr, edited, options);
  CHECK(session.resets == 0);
  CHECK(session.truncations == std::vector<int64_t>{3});
  CHECK(session.prefilled.front() == 2);
  CHECK(r.stats.prefilled_tokens == 2);
  ScriptedSession fresh(hashed_logits);
  CHECK(generate(fresh, nullptr, edited, options).ids == r.ids);

  // The whole prompt already held: it keeps all but the last token, which is prefilled again.
  ScriptedSession held(hashed_logits);
  held.prefill(std::vector<int32_t>{1, 2, 3, 9, 9, 4}, false);
  session.prefilled.clear();
  const auto again = generate(held, nullptr, edited, options);
  CHECK(held.truncations == std::vector<int64_t>{4});
  CHECK(again.stats.prefilled_tokens == 1);
  CHECK(again.ids == r.ids);
}

TEST_CASE("generate: eos ids come from the config and the tokenizer", "[generate]") {
  ModelConfig config;
  config.eos_token_ids = {7, 15, -1};
  const auto tok = make_tokenizer();
  CHECK(eos_ids_for(config, &tok) == std::vector<int32_t>{7, 15});
  CHECK(eos_ids_for(config, nullptr) == std::vector<int32_t>{7, 15});
  config.eos_token_ids = {};
  CHECK(eos_ids_for(config, &tok) == std::vector<int32_t>{15});
}
