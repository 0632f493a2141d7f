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
// With `reference`, its logits for the same prompts stand in for the golden ones (an f16 KV cache
// against an f32 one).
GoldenResult compare_with_golden(Engine& engine, const std::string& golden_path, Engine* reference = nullptr);

// Greedy ids after `prompt` (prefill, then decode one token at a time).
std::vector<int32_t> greedy_ids(Engine& engine, const std::vector<int32_t>& prompt, size_t count);

// max|a - b| / max|b|, and whether the argmax of each `width`-row agrees.
double relative_max_error(std::span<const float> a, std::span<const float> b);
int64_t argmax_mismatches(std::span<const float> a, std::span<const float> b, int64_t width);

// KV in f32 unless asked: the golden tolerances of exact float maths.
std::unique_ptr<Engine> load_for_test(const std::string& path, int64_t kv_block_tokens = 16,
                                      int64_t max_batch_tokens = 512, KvType kv_type = KvType::f32);

}  // namespace tandem::test
