#pragma once
// Flags shared by `tandem run` and `tandem chat`: sampling, length, stops, and load options
// (`--placement` also by `tandem eval`).
#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tandem/engine/engine.hpp"
#include "tandem/text/sampler.hpp"

namespace tandem::cli {

// `--placement RULES`: the one definition, used by run, chat (through GenerationFlags) and eval.
inline CLI::Option* add_placement_flag(CLI::App& app, std::string& rules) {
  return app.add_option("--placement", rules,
                        "where weights live: rules like 'experts=cpu,*=cuda:0' (first match wins) or @FILE; "
                        "default: routed experts on cpu, the rest on cuda:0 when the CUDA backend can run "
                        "it, else all on cpu (docs/PLACEMENT.md)");
}

struct GenerationFlags {
  std::string model_path;
  int64_t max_new_tokens;
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::optional<uint64_t> seed;  // none: a random seed
  std::vector<std::string> stops;
  bool ignore_eos = false;
  int threads = 0;
  int64_t context_tokens = 4096;
  std::string placement;  // LoadOptions::placement

  explicit GenerationFlags(int64_t default_max_new_tokens) : max_new_tokens(default_max_new_tokens) {}

  void add_to(CLI::App& app) {
    app.add_option("-m,--model", model_path, "GGUF file or HF model folder")->required();
    app.add_option("-n,--max-tokens", max_new_tokens, "tokens to generate at most (-1: until EOS)")
        ->capture_default_str();
    app.add_option("--temp", temperature, "temperature, 0 = greedy")->capture_default_str();
    app.add_option("--top-k", top_k, "keep the k most likely tokens, 0 = off")->capture_default_str();
    app.add_option("--top-p", top_p, "nucleus: smallest set with probability >= p, 1 = off")
        ->capture_default_str();
    app.add_option("--min-p", min_p, "drop tokens below min_p x the best one's probability, 0 = off")
        ->capture_default_str();
    app.add_option("--repeat-penalty", repeat_penalty, "HF repetition penalty, 1 = off")
        ->capture_default_str();
    app.add_option("--repeat-last-n", repeat_last_n, "tokens the penalties look back at, -1 = all")
        ->capture_default_str();
    app.add_option("--frequency-penalty", frequency_penalty, "OpenAI frequency penalty")
        ->capture_default_str();
    app.add_option("--presence-penalty", presence_penalty, "OpenAI presence penalty")->capture_default_str();
    app.add_option("--seed", seed, "RNG seed (same seed, same text); default random");
    app.add_option("--stop", stops, "stop when the text contains this (repeatable; not printed)");
    app.add_flag("--ignore-eos", ignore_eos, "keep generating past EOS tokens");
    app.add_option("-t,--threads", threads, "CPU threads, 0 = one per physical core")->capture_default_str();
    app.add_option("-c,--ctx", context_tokens, "context length of the session in tokens")
        ->capture_default_str();
    add_placement_flag(app, placement);
  }

  SamplingParams sampling() const {
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = repeat_penalty;
    p.penalty_last_n = repeat_last_n;
    p.frequency_penalty = frequency_penalty;
    p.presence_penalty = presence_penalty;
    p.seed = seed ? *seed : std::random_device{}();
    return p;
  }

  LoadOptions load_options() const {
    LoadOptions o;
    o.threads = threads;
    o.max_context_tokens = context_tokens;
    o.max_sessions = 1;
    o.placement = placement;
    return o;
  }
};

}  // namespace tandem::cli
