// Correctness against HF transformers on the bundled tiny models (no ../shared needed), plus the
// shared helpers the other engine tests use.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/formats/safetensors.hpp"

namespace tandem::test {

double relative_max_error(std::span<const float> a, std::span<const float> b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    if (!std::isfinite(a[i])) return INFINITY;
  }
  return a.size() == b.size() ? diff / scale : INFINITY;
}

int64_t argmax_mismatches(std::span<const float> a, std::span<const float> b, int64_t width) {
  int64_t mismatches = 0;
  for (size_t row = 0; row + static_cast<size_t>(width) <= a.size(); row += static_cast<size_t>(width)) {
    const auto ra = a.subspan(row, static_cast<size_t>(width)),
               rb = b.subspan(row, static_cast<size_t>(width));
    if (std::max_element(ra.begin(), ra.end()) - ra.begin() !=
        std::max_element(rb.begin(), rb.end()) - rb.begin())
      ++mismatches;
  }
  return mismatches;
}

std::unique_ptr<Engine> load_for_test(const std::string& path, int64_t kv_block_tokens,
                                      int64_t max_batch_tokens) {
  LoadOptions options;
  options.max_context_tokens = 512;
  options.max_sessions = 2;
  options.kv_block_tokens = kv_block_tokens;
  options.max_batch_tokens = max_batch_tokens;
  options.load_tokenizer = false;
  return Engine::load(path, options);
}

double GoldenResult::fraction_within(double tolerance) const {
  if (position_relative.empty()) return 0;
  const auto within = std::count_if(position_relative.begin(), position_relative.end(),
                                    [&](double r) { return r <= tolerance; });
  return static_cast<double>(within) / static_cast<double>(position_relative.size());
}

namespace {

template <typename T>
std::span<const T> tensor_span(const SafetensorsModel& st, const std::string& name) {
  const TensorEntry& e = st.tensors().require(name);
  return {static_cast<const T*>(e.view.data), static_cast<size_t>(e.view.shape.elements())};
}

}  // namespace

GoldenResult compare_with_golden(Engine& engine, const std::string& golden_path) {
  const SafetensorsModel golden = SafetensorsModel::open(golden_path);
  const int64_t vocab = engine.config().vocab_size;
  GoldenResult result;
  auto check = [&](const std::string& ids_name, const std::string& logits_name, int64_t last_rows) {
    if (!golden.tensors().find(ids_name)) return;
    const auto ids = tensor_span<int32_t>(golden, ids_name);
    const auto expected = tensor_span<float>(golden, logits_name);
    auto session = engine.new_session();
    session->prefill(ids, /*all_logits=*/true);
    auto got = session->all_logits();
    if (last_rows > 0) got = got.subspan(got.size() - static_cast<size_t>(last_rows * vocab));
    const double rel = relative_max_error(got, expected);
    INFO(ids_name << ": relative max error " << rel);
    result.worst_relative = std::max(result.worst_relative, rel);
    result.argmax_mismatches += argmax_mismatches(got, expected, vocab);
    result.positions += static_cast<int64_t>(expected.size()) / vocab;
    for (size_t row = 0; row < expected.size() / static_cast<size_t>(vocab); ++row)
      result.position_relative.push_back(
          relative_max_error(got.subspan(row * static_cast<size_t>(vocab), static_cast<size_t>(vocab)),
                             expected.subspan(row * static_cast<size_t>(vocab), static_cast<size_t>(vocab))));
    ++result.prompts;
  };
  for (int k = 0; k < 4; ++k)
    check("prompt" + std::to_string(k) + ".ids", "prompt" + std::to_string(k) + ".logits", 0);
  check("long.ids", "long.logits_last8", 8);
  return result;
}

}  // namespace tandem::test

using namespace tandem;

TEST_CASE("tiny bundled models match HF golden logits (F32 safetensors)", "[engine][golden]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const std::string dir = test::data_dir() + "/" + name;
    auto engine = test::load_for_test(dir);
    const auto r = test::compare_with_golden(*engine, dir + "/golden.safetensors");
    WARN(name << ": " << r.prompts << " prompts, worst max|d|/max|golden| = " << r.worst_relative
              << ", argmax mismatches " << r.argmax_mismatches << "/" << r.positions);
    CHECK(r.prompts == 5);
    CHECK(r.worst_relative <= 1e-3);
    CHECK(r.argmax_mismatches == 0);
  }
}
