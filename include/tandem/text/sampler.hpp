#pragma once
// Token sampling over a logits row: penalties, then temperature / top-k / top-p / min-p, with a
// seeded RNG so the same seed gives the same text.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace tandem {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;  // HF style: divide positive logits, multiply negative
  float frequency_penalty = 0.0f;   // OpenAI style, per occurrence
  float presence_penalty = 0.0f;    // OpenAI style, once per seen token
  int32_t penalty_last_n = 64;      // window of recent tokens the penalties look at (-1 = all)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  // Chooses the next token from `logits`; `history` is the sequence so far (prompt + generated).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  const SamplingParams& params() const { return params_; }
  void reseed(uint64_t seed);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  std::vector<int32_t> order_;
};

}  // namespace tandem
