// Encode throughput of the real Qwen3 tokenizer on a few MB of mixed text (the golden texts:
// scripts, emoji, code, whitespace runs, license prose), in bytes/s on one thread.
//   BM_EncodeWarm: steady state, the word cache already filled by earlier iterations.
//   BM_EncodeCold: a freshly loaded tokenizer per iteration (empty cache; load not timed).
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "tandem/text/tokenizer.hpp"

namespace {

std::string fixtures_dir() {
  const char* env = std::getenv("TANDEM_FIXTURES");
  return env ? env : TANDEM_DEFAULT_FIXTURES_DIR;
}

const std::string& mixed_text() {
  static const std::string text = [] {
    std::ifstream in(fixtures_dir() + "/tokenizers/golden.json");
    if (!in) return std::string();
    const auto golden = nlohmann::json::parse(in);
    std::string one_round;
    for (const char* name : {"qwen3", "deepseek_v3"})
      for (const auto& c : golden.at(name).at("cases")) one_round += c.at("text").get<std::string>() + "\n";
    std::string all;
    while (all.size() < (4u << 20)) all += one_round;
    return all;
  }();
  return text;
}

std::string tokenizer_path() { return fixtures_dir() + "/tokenizers/qwen3"; }

void BM_EncodeWarm(benchmark::State& state) {
  if (mixed_text().empty()) return state.SkipWithError("fixtures not found (set TANDEM_FIXTURES)");
  const auto tok = tandem::Tokenizer::load(tokenizer_path());
  size_t tokens = 0;
  for (auto _ : state) {
    const auto ids = tok->encode(mixed_text(), false);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * mixed_text().size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["text_MB"] = static_cast<double>(mixed_text().size()) / 1e6;
}
BENCHMARK(BM_EncodeWarm)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EncodeCold(benchmark::State& state) {
  if (mixed_text().empty()) return state.SkipWithError("fixtures not found (set TANDEM_FIXTURES)");
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = tandem::Tokenizer::load(tokenizer_path());
    state.ResumeTiming();
    const auto ids = tok->encode(mixed_text(), false);
    benchmark::DoNotOptimize(ids.data());
    state.PauseTiming();
    tok.reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * mixed_text().size()));
}
BENCHMARK(BM_EncodeCold)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
