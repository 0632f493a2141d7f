// The bundled model the README's first command runs: the trained Qwen3-MoE quantised to Q4_K_M
// (tests/data/trained-qwen3moe, copied from ../shared/fixtures/trained). Its reference is HF
// float64 on the bf16 weights (reference.json): Q4_K_M rounding may flip a near-tie later in a
// continuation, so the check is the one that holds for this file: the first prompt's 32 greedy
// tokens and the first token of every prompt equal HF's, and `tandem run -p` prints HF's text.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"

namespace {

std::string bundled_dir() { return tandem::test::data_dir() + "/trained-qwen3moe"; }
std::string bundled_gguf() { return bundled_dir() + "/qwen3moe-q4_k_m.gguf"; }

nlohmann::json reference() {
  std::ifstream in(bundled_dir() + "/reference.json");
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

int32_t argmax(std::span<const float> row) {
  int32_t best = 0;
  for (size_t i = 1; i < row.size(); ++i)
    if (row[i] > row[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  return best;
}

std::vector<int32_t> greedy(tandem::Engine& engine, const std::vector<int32_t>& prompt, int n) {
  auto session = engine.new_session();
  session->prefill(prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(argmax(session->logits()));
    if (i + 1 < n) session->decode(out.back());
  }
  return out;
}

}  // namespace

TEST_CASE("bundled trained Qwen3-MoE Q4_K_M: greedy ids against HF float64", "[bundled]") {
  const auto ref = reference();
  tandem::LoadOptions opts;
  opts.threads = 2;
  auto engine = tandem::Engine::load(bundled_gguf(), opts);
  REQUIRE(engine->tokenizer() != nullptr);
  const auto& gens = ref.at("generations");
  REQUIRE(gens.size() == 4);
  for (size_t p = 0; p < gens.size(); ++p) {
    const auto prompt = gens[p].at("prompt_ids").get<std::vector<int32_t>>();
    const auto expected = gens[p].at("greedy_ids").get<std::vector<int32_t>>();
    const int n = p == 0 ? static_cast<int>(expected.size()) : 1;
    const auto got = greedy(*engine, prompt, n);
    INFO("prompt " << p);
    CHECK(got == std::vector<int32_t>(expected.begin(), expected.begin() + n));
  }
}

TEST_CASE("README first command: tandem run -p on the bundled model prints code", "[bundled][cli]") {
  const auto ref = reference();
  const auto& g = ref.at("generations").at(0);
  int status = 0;
  const std::string out = tandem::test::run_cli(
      "run -m " + tandem::test::shell_quote(bundled_gguf()) + " -p " +
          tandem::test::shell_quote(g.at("prompt").get<std::string>()) + " -n 32 --temp 0",
      status);
  CHECK(status == 0);
  // The stats line goes to stderr (discarded); stdout is the continuation only.
  CHECK(out.rfind(g.at("greedy_text").get<std::string>(), 0) == 0);
}
