#pragma once
// Comparing the engine's logits with golden.safetensors (HF transformers, float64).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tandem/engine/engine.hpp"

namespace tandem::test {

struct GoldenResult {
  double worst_relative = 0;  // max over prompts of max|Δ| / max|golden|
  int64_t argmax_mismatches = 0;
  int64_t positions = 0;
  int prompts = 0;
  std::vector<double> position_relative;  // max|Δ| / max|golden| of each position's row
  double fraction_within(double tolerance) const;
};

// Runs every prompt of `golden_path` (promptK.ids/logits, long.ids/logits_last8) through `engine`.
GoldenResult compare_with_golden(Engine& engine, const std::string& golden_path);

// max|a - b| / max|b|, and whether the argmax of each `width`-row agrees.
double relative_max_error(std::span<const float> a, std::span<const float> b);
int64_t argmax_mismatches(std::span<const float> a, std::span<const float> b, int64_t width);

std::unique_ptr<Engine> load_for_test(const std::string& path, int64_t kv_block_tokens = 16,
                                      int64_t max_batch_tokens = 512);

}  // namespace tandem::test
