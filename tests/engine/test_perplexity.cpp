// `tandem perplexity` and evaluate_perplexity: windows and scored counts as llama.cpp's tool
// defines them, the NLL arithmetic against an independent computation, the CLI's --json contract
// and bad input; with ../shared/fixtures, both trained bf16 folders against HF float64's
// perplexity of eval-dev.txt (reference.json), within 0.2 %.
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/perplexity.hpp"
#include "tandem/error.hpp"
#include "tandem/text/tokenizer.hpp"

namespace {

using tandem::test::run_cli_captured;
using tandem::test::shell_quote;

std::string bundled_path() { return tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf"; }

// Source text the bundled model knows how to read: the test's own file.
std::string sample_text() {
  std::ifstream in(std::string(TANDEM_SOURCE_DIR) + "/src/engine/perplexity.cpp", std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& bytes) {
    char pattern[] = "/tmp/tandem-ppl-XXXXXX";
    const int fd = mkstemp(pattern);
    REQUIRE(fd >= 0);
    close(fd);
    path = pattern;
    std::ofstream(path, std::ios::binary) << bytes;
  }
  ~TempFile() { std::filesystem::remove(path); }
};

}  // namespace

TEST_CASE("perplexity: token_nll is logsumexp minus the target's logit", "[perplexity]") {
  const std::vector<float> row = {0.0f, std::log(3.0f), -1e30f};
  CHECK(tandem::token_nll(row, 1) == Approx(std::log(4.0 / 3.0)).epsilon(1e-6));
  CHECK(tandem::token_nll(row, 0) == Approx(std::log(4.0)).epsilon(1e-6));
  const std::vector<float> large = {1000.0f, 1000.0f};  // no overflow
  CHECK(tandem::token_nll(large, 0) == Approx(std::log(2.0)).epsilon(1e-9));
}

TEST_CASE("perplexity: windows, scored tokens and NLLs match a direct computation", "[perplexity]") {
  tandem::LoadOptions options;
  options.max_sessions = 2;
  options.max_context_tokens = 64;
  const auto engine = tandem::Engine::load(bundled_path(), options);
  const auto tokens = engine->tokenizer()->encode(sample_text(), /*add_special=*/false);
  const int64_t ctx = 32;
  REQUIRE(tokens.size() >= 3 * ctx + 5);
  const std::vector<int32_t> stream(tokens.begin(), tokens.begin() + 3 * ctx + 5);

  tandem::PerplexityOptions ppl_options;
  ppl_options.ctx = ctx;
  int progress_calls = 0;
  const auto result = tandem::evaluate_perplexity(*engine, stream, ppl_options,
                                                  [&](const tandem::PerplexityResult&) { ++progress_calls; });
  CHECK(result.windows == 3);
  CHECK(progress_calls == 3);
  CHECK(result.tokens == 3 * ctx + 5);
  CHECK(result.scored == 3 * (ctx / 2 - 1));

  // Independently: each window from an empty session, position by position with decode().
  double nll = 0;
  const auto session = engine->new_session();
  for (int64_t w = 0; w < 3; ++w) {
    session->reset();
    for (int64_t j = 0; j < ctx - 1; ++j) {
      session->decode(stream[static_cast<size_t>(w * ctx + j)]);
      if (j < ctx / 2) continue;
      const auto row = session->logits();
      const int32_t target = stream[static_cast<size_t>(w * ctx + j + 1)];
      double sum = 0;
      for (float v : row) sum += std::exp(static_cast<double>(v));
      nll += std::log(sum) - row[static_cast<size_t>(target)];
    }
  }
  // Windows run as one batch (prefill tile kernels at >= 8 tokens, attention items of 8 tokens) and
  // the direct computation one token at a time (dot kernels, one-token items): the same integer sums
  // and softmax steps in another float order (another FMA contraction too in the -O1 sanitizer
  // build), which can flip a near-tied expert choice; measured 5e-4 apart at -O2, 9e-4 at -O1. A
  // scoring or window error moves it by more. The perplexity is exp(mean NLL): its log is held to
  // the NLL's tolerance (its own relative error is the mean NLL's absolute one, ~3.6 times larger).
  CHECK(result.nll_sum == Approx(nll).epsilon(2e-3));
  CHECK(std::log(result.ppl) == Approx(nll / static_cast<double>(result.scored)).epsilon(2e-3));
  // A code model on code: far better than uniform over the vocabulary, and no better than certain.
  CHECK(result.ppl > 1.0);
  CHECK(result.ppl < static_cast<double>(engine->config().vocab_size) / 10);

  ppl_options.max_windows = 2;
  CHECK(tandem::evaluate_perplexity(*engine, stream, ppl_options).scored == 2 * (ctx / 2 - 1));
  ppl_options.ctx = 33;
  CHECK_THROWS_AS(tandem::evaluate_perplexity(*engine, stream, ppl_options), tandem::Error);
  ppl_options.ctx = 128;  // beyond the engine's context
  CHECK_THROWS_AS(tandem::evaluate_perplexity(*engine, stream, ppl_options), tandem::Error);
}

TEST_CASE("perplexity CLI: --json prints one object with the contract's keys", "[perplexity][cli]") {
  const TempFile text(sample_text());
  const auto r = run_cli_captured("perplexity -m " + shell_quote(bundled_path()) + " -f " + shell_quote(text.path) +
                                  " --ctx 64 --chunks 2 --json");
  REQUIRE(r.exit_code == 0);
  const auto out = nlohmann::json::parse(r.out);
  for (const char* key : {"ppl", "windows", "tokens", "scored", "seconds"}) CHECK(out.contains(key));
  CHECK(out["windows"] == 2);
  CHECK(out["scored"] == 2 * 31);
  CHECK(out["ppl"].get<double>() > 1.0);

  const auto plain = run_cli_captured("perplexity -m " + shell_quote(bundled_path()) + " -f " +
                                      shell_quote(text.path) + " --ctx 64 --chunks 2");
  REQUIRE(plain.exit_code == 0);
  CHECK(plain.out.find("[1]") != std::string::npos);
  CHECK(plain.out.find("[2]") != std::string::npos);
  CHECK(plain.out.find("Final estimate: PPL = ") != std::string::npos);
}

TEST_CASE("perplexity CLI: bad input is a clear error and exit 1", "[perplexity][cli]") {
  const std::string model = " -m " + shell_quote(bundled_path());
  const TempFile good(sample_text());
  const TempFile empty("");
  const TempFile latin1(std::string("caf\xe9 au lait\n", 14));
  const TempFile short_text("def f(): pass\n");
  const struct {
    std::string args;
    const char* says;
  } cases[] = {
      {" -f " + shell_quote(good.path) + " --ctx 63", "even"},
      {" -f " + shell_quote(good.path) + " --ctx 1000000", "trained context"},
      {" -f " + shell_quote(empty.path), "empty"},
      {" -f " + shell_quote(latin1.path), "UTF-8"},
      {" -f " + shell_quote(short_text.path), "less than one window"},
      {" -f /nonexistent/text.txt", "/nonexistent/text.txt"},
      {" -f /dev/zero", "/dev/zero"},
  };
  for (const auto& c : cases) {
    INFO(c.args);
    const auto r = run_cli_captured("perplexity" + model + c.args);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
}

TEST_CASE("perplexity: trained bf16 folders match HF float64 on eval-dev within 0.2 %", "[perplexity][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
#if defined(__SANITIZE_ADDRESS__)
  // 2 × 135k tokens take minutes in an optimised build; the sanitizer build runs the short cases.
  WARN("skipped under AddressSanitizer: the optimised build runs the whole eval-dev text");
  return;
#endif
  for (const char* name : {"qwen3moe", "deepseekv3"}) {
    INFO(name);
    const std::string folder = fx + "/trained/" + name;
    std::ifstream ref_in(folder + "/reference.json");
    REQUIRE(ref_in);
    const auto reference = nlohmann::json::parse(ref_in)["eval-dev"];
    const auto r = run_cli_captured("perplexity -m " + shell_quote(folder) + " -f " +
                                    shell_quote(fx + "/trained/text/eval-dev.txt") + " --ctx 512 --json");
    REQUIRE(r.exit_code == 0);
    const auto got = nlohmann::json::parse(r.out);
    CHECK(got["tokens"] == reference["tokens"]);
    CHECK(got["windows"] == reference["windows"]);
    CHECK(got["scored"] == reference["scored"]);
    const double expected = reference["ppl"].get<double>();
    CHECK(std::abs(got["ppl"].get<double>() / expected - 1.0) < 0.002);
  }
}
