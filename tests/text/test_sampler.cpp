// Sampler: each truncation checked statistically against the distribution computed here
// independently (sort, cut, renormalise), penalties against hand-computed logits.
// This file replaces global operator new/delete with malloc/free to count allocations; GCC cannot
// see that they pair up and would warn at every inlined delete.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <random>
#include <cmath>
#include <cstdlib>
#include <new>
#include <numeric>
#include <vector>

#include "tandem/error.hpp"
#include "tandem/text/sampler.hpp"

// Counts heap allocations, to check that sample() reuses its scratch after the first call.
namespace {
std::atomic<long> g_allocations{0};
}
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
// The nothrow forms too: the library pairs them with the sized delete below (std::stable_sort's
// temporary buffer), and a sanitizer's own nothrow new would then be freed by our free().
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept { return operator new(size, tag); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using tandem::Sampler;
using tandem::SamplingParams;

// A known distribution over 10 tokens, deliberately not sorted by id.
const std::vector<double> kProbs = {0.05, 0.30, 0.02, 0.15, 0.01, 0.20, 0.10, 0.04, 0.08, 0.05};

std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> logits;
  for (double x : p) logits.push_back(static_cast<float>(std::log(x)));
  return logits;
}

// The reference: temperature, then top-k, top-p, min-p on a fully sorted copy, renormalised.
std::vector<double> expected_distribution(const std::vector<double>& probs, double temperature, int top_k,
                                          double top_p, double min_p) {
  const size_t n = probs.size();
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = std::pow(probs[i], 1.0 / temperature);
  std::vector<size_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](size_t a, size_t b) { return w[a] > w[b]; });
  size_t keep = n;
  if (top_k > 0) keep = std::min(keep, static_cast<size_t>(top_k));
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += w[ids[i]];
  if (top_p < 1) {
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += w[ids[i]] / total;
      if (cumulative >= top_p - 1e-12) {
        keep = i + 1;
        break;
      }
    }
  }
  std::vector<double> out(n, 0.0);
  const double max_w = w[ids[0]];
  double kept_total = 0;
  for (size_t i = 0; i < keep; ++i)
    if (w[ids[i]] >= min_p * max_w) kept_total += w[ids[i]];
  for (size_t i = 0; i < keep; ++i)
    if (w[ids[i]] >= min_p * max_w) out[ids[i]] = w[ids[i]] / kept_total;
  return out;
}

// Chi-square goodness of fit at significance 0.001 (Wilson–Hilferty critical value); tokens with
// expected probability 0 must never be drawn.
void check_distribution(const SamplingParams& params, const std::vector<double>& expected,
                        int draws = 40000) {
  Sampler sampler(params);
  const auto logits = log_probs(kProbs);
  std::vector<int> counts(expected.size(), 0);
  int out_of_range = 0;
  for (int i = 0; i < draws; ++i) {
    const int32_t id = sampler.sample(logits, {});
    if (id < 0 || id >= static_cast<int32_t>(expected.size()))
      ++out_of_range;
    else
      ++counts[static_cast<size_t>(id)];
  }
  REQUIRE(out_of_range == 0);
  double chi2 = 0;
  int support = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("token " << i << " expected p " << expected[i] << " observed " << counts[i]);
    if (expected[i] == 0) {
      CHECK(counts[i] == 0);
      continue;
    }
    ++support;
    const double e = expected[i] * draws;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  if (support > 1) {
    const double df = support - 1, z = 3.09;
    const double critical = df * std::pow(1 - 2 / (9 * df) + z * std::sqrt(2 / (9 * df)), 3);
    INFO("chi2 " << chi2 << " critical " << critical << " df " << df);
    CHECK(chi2 < critical);
  }
}

}  // namespace

TEST_CASE("sampler: temperature 1 reproduces the logits' distribution", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 11;
  check_distribution(p, expected_distribution(kProbs, 1.0, 0, 1.0, 0.0));
}

TEST_CASE("sampler: temperature sharpens and flattens", "[sampler]") {
  for (float t : {0.5f, 2.0f}) {
    SamplingParams p;
    p.temperature = t;
    p.seed = 12;
    INFO("temperature " << t);
    check_distribution(p, expected_distribution(kProbs, t, 0, 1.0, 0.0));
  }
}

TEST_CASE("sampler: top-k keeps the k most likely, renormalised", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 3;
  p.seed = 13;
  const auto expected = expected_distribution(kProbs, 1.0, 3, 1.0, 0.0);
  CHECK(expected[1] == Approx(0.30 / 0.65));
  check_distribution(p, expected);
}

TEST_CASE("sampler: top-p keeps the smallest nucleus reaching p", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;  // 0.30 + 0.20 + 0.15 = 0.65 < 0.7, so 0.10 joins: 4 tokens
  p.seed = 14;
  const auto expected = expected_distribution(kProbs, 1.0, 0, 0.7, 0.0);
  CHECK(std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0; }) == 4);
  check_distribution(p, expected);
  p.top_p = 0.05f;  // the top token alone exceeds p: exactly one survives
  check_distribution(p, expected_distribution(kProbs, 1.0, 0, 0.05, 0.0), 2000);
}

TEST_CASE("sampler: min-p keeps tokens at least min_p times the best", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.3f;  // threshold 0.09: keeps 0.30, 0.20, 0.15, 0.10
  p.seed = 15;
  const auto expected = expected_distribution(kProbs, 1.0, 0, 1.0, 0.3);
  CHECK(std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0; }) == 4);
  check_distribution(p, expected);
}

TEST_CASE("sampler: temperature, top-k, top-p, min-p compose in order", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 6;
  p.top_p = 0.8f;
  p.min_p = 0.4f;
  p.seed = 16;
  check_distribution(p, expected_distribution(kProbs, 1.5, 6, 0.8, 0.4));
}

TEST_CASE("sampler: top-p over a large vocabulary sorts past its first chunk", "[sampler]") {
  // 5000 near-uniform tokens: the nucleus for p = 0.5 holds ~2500 of them.
  std::vector<float> logits(5000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 1e-4f * static_cast<float>(i % 97);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;
  p.seed = 17;
  std::vector<float> w(logits.size());
  double total = 0;
  for (size_t i = 0; i < w.size(); ++i) total += (w[i] = std::exp(logits[i]));
  std::vector<size_t> ids(w.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::vector<bool> allowed(w.size(), false);
  double cumulative = 0;
  for (size_t id : ids) {
    allowed[id] = true;
    cumulative += w[id] / total;
    if (cumulative >= 0.5) break;
  }
  Sampler sampler(p);
  int outside = 0;
  for (int i = 0; i < 5000; ++i) outside += allowed[static_cast<size_t>(sampler.sample(logits, {}))] ? 0 : 1;
  CHECK(outside == 0);
}

TEST_CASE("sampler: greedy is argmax with ties to the lowest id", "[sampler]") {
  Sampler sampler(SamplingParams{});
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 2.5f};
  CHECK(sampler.sample(logits, {}) == 1);
  const std::vector<float> with_nan = {NAN, 0.5f, 0.7f};
  CHECK(sampler.sample(with_nan, {}) == 2);
  SamplingParams p;
  p.temperature = 1.0f;
  Sampler tempered(p);
  const std::vector<float> one_hot = {-INFINITY, -INFINITY, 0.0f, -INFINITY};
  for (int i = 0; i < 100; ++i) REQUIRE(tempered.sample(one_hot, {}) == 2);
}

TEST_CASE("sampler: greedy over a large vocabulary equals a plain first-maximum scan", "[sampler]") {
  // Greedy reads the row in place in blocks of 16: ties across blocks, NaN, +inf and a row with
  // nothing above -inf against the obvious loop.
  const auto reference = [](const std::vector<float>& row) {
    int32_t best = 0;
    float value = -INFINITY;
    for (size_t i = 0; i < row.size(); ++i)
      if (row[i] > value) {  // NaN never wins
        value = row[i];
        best = static_cast<int32_t>(i);
      }
    return best;
  };
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> row(151936 + 5);
  for (auto& x : row) x = normal(rng);
  Sampler greedy(SamplingParams{});
  CHECK(greedy.sample(row, {}) == reference(row));
  row[100001] = 50.0f;
  row[40003] = 50.0f;  // a tie in another block: the lower id
  row[7] = NAN;
  CHECK(greedy.sample(row, {}) == 40003);
  row[151938] = 60.0f;  // in the tail past the last whole block
  CHECK(greedy.sample(row, {}) == 151938);
  row[3] = INFINITY;
  CHECK(greedy.sample(row, {}) == 3);
  std::vector<float> none(40, -INFINITY);
  none[0] = NAN;
  none[33] = NAN;
  CHECK(greedy.sample(none, {}) == 0);
  // With penalties greedy goes through the penalised copy: the same answer where they do nothing.
  SamplingParams penalised;
  penalised.repetition_penalty = 1.5f;
  Sampler with_penalty(penalised);
  row[3] = 0.0f;
  CHECK(with_penalty.sample(row, std::vector<int32_t>{5}) == 151938);
}

TEST_CASE("sampler: repetition, frequency and presence penalties match hand-computed logits", "[sampler]") {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  p.penalty_last_n = -1;
  Sampler sampler(p);
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  const std::vector<int32_t> history = {0, 1, 1, 3, 9, -4};  // 9 and -4 are outside the vocabulary
  CHECK(sampler.sample(logits, history) == 3);
  const auto out = sampler.processed_logits();
  REQUIRE(out.size() == 5);
  CHECK(out[0] == Approx(2.0 / 2 - 1 * 0.5 - 0.25));   // 0.25
  CHECK(out[1] == Approx(-1.0 * 2 - 2 * 0.5 - 0.25));  // -3.25
  CHECK(out[2] == Approx(0.5));
  CHECK(out[3] == Approx(3.0 / 2 - 1 * 0.5 - 0.25));  // 0.75
  CHECK(out[4] == Approx(-2.0));

  // The window: the last 3 tokens are 3, 9, -4, so only token 3 is penalised.
  p.penalty_last_n = 3;
  Sampler windowed(p);
  windowed.sample(logits, history);
  const auto w = windowed.processed_logits();
  CHECK(w[0] == Approx(2.0));
  CHECK(w[1] == Approx(-1.0));
  CHECK(w[3] == Approx(0.75));

  // A repetition penalty large enough changes the greedy choice.
  SamplingParams strong;
  strong.repetition_penalty = 4.0f;
  Sampler greedy(strong);
  const std::vector<float> close = {1.0f, 3.0f, 2.0f};
  CHECK(greedy.sample(close, std::vector<int32_t>{1}) == 2);  // 3/4 = 0.75 < 2
}

TEST_CASE("sampler: same seed, same tokens; other seeds differ", "[sampler]") {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  const auto logits = log_probs(kProbs);
  const auto draw = [&](Sampler& s) {
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(logits, {}));
    return out;
  };
  Sampler a(p), b(p);
  const auto first = draw(a);
  CHECK(first == draw(b));
  p.seed = 1235;
  Sampler c(p);
  CHECK(first != draw(c));
  a.reseed(1234);
  CHECK(first == draw(a));
}

TEST_CASE("sampler: no allocation after the first call", "[sampler]") {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 50;
  p.top_p = 0.9f;
  p.min_p = 0.01f;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.1f;
  std::vector<float> logits(4096);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(0.37f * static_cast<float>(i)) * 4;
  std::vector<int32_t> history = {1, 2, 3, 4, 5, 6};
  Sampler sampler(p);
  sampler.sample(logits, history);
  const long before = g_allocations.load();
  for (int i = 0; i < 100; ++i) sampler.sample(logits, history);
  CHECK(g_allocations.load() == before);
}

TEST_CASE("sampler: bad parameters and inputs are errors", "[sampler]") {
  const auto rejects = [](SamplingParams p) {
    try {
      Sampler s(p);
    } catch (const tandem::Error& e) {
      return e.kind() == tandem::ErrorKind::invalid_argument;
    }
    return false;
  };
  SamplingParams p;
  p.temperature = -1;
  CHECK(rejects(p));
  p = {};
  p.top_p = 0;
  CHECK(rejects(p));
  p = {};
  p.min_p = 1.5f;
  CHECK(rejects(p));
  p = {};
  p.repetition_penalty = 0;
  CHECK(rejects(p));
  p = {};
  p.top_k = -3;
  CHECK(rejects(p));
  Sampler ok(SamplingParams{});
  CHECK_THROWS_AS(ok.sample(std::span<const float>{}, {}), tandem::Error);
}
