#pragma once
// Token sampling over a logits row: penalties, then temperature / top-k / top-p / min-p, with a
// seeded RNG so the same seed gives the same text.
//
// Order of the steps (as llama.cpp and HF apply them):
//   repetition penalty → frequency/presence penalties → temperature → top-k → top-p → min-p →
//   draw from the renormalised survivors.
// Temperature 0 is greedy: argmax of the penalised logits, ties to the lowest id.
//
// RNG: std::mt19937_64 seeded with `seed`; one 64-bit draw per sampled token, mapped to a double
// in [0, 1) from its top 53 bits (not std::uniform_real_distribution, whose mapping differs
// between standard libraries), so a seed gives the same tokens on every platform.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace tandem {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // HF style: divide positive logits, multiply negative
  float frequency_penalty = 0.0f;   // OpenAI style, per occurrence
  float presence_penalty = 0.0f;    // OpenAI style, once per seen token
  int32_t penalty_last_n = 64;      // window of recent tokens the penalties look at (-1 = all)
  uint64_t seed = 0;
};

// Throws Error(invalid_argument) naming the first parameter out of its range.
void validate(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(SamplingParams params);  // validates params
  // Chooses the next token from `logits`; `history` is the sequence so far (prompt + generated).
  // History ids outside [0, vocab) are ignored by the penalties. NaN logits count as -inf.
  // Allocates only on the first call (or when the vocabulary grows): scratch is reused.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  const SamplingParams& params() const { return params_; }
  // The last call's logits after penalties and temperature (before truncation), for inspection.
  std::span<const float> processed_logits() const { return scratch_; }
  void reseed(uint64_t seed);

 private:
  bool has_penalties() const;
  void apply_penalties(std::span<const int32_t> history);
  int32_t argmax() const;
  double uniform01();

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;   // [vocab] penalised, tempered logits
  std::vector<int32_t> order_;   // candidate ids, best first once sorted
  std::vector<int32_t> counts_;  // [vocab] occurrences in the penalty window, kept zeroed
  std::vector<double> probs_;    // probabilities of order_'s candidates
};

}  // namespace tandem
