// Retention policies (sinks + window, H2O, SnapKV): parsing, the slots each keeps against small
// reference implementations that track tokens by position, the engine's bounded sessions, and the
// KL divergence perplexity reports for a compressed cache.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/perplexity.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/retention.hpp"

using namespace tandem;

namespace {

// A deterministic "attention weight" of query position q on key position p.
float weight(int64_t q, int64_t p) {
  const uint64_t h = static_cast<uint64_t>(q) * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(p) * 0xC2B2AE3D27D4EB4Full;
  return static_cast<float>((h >> 40) % 1000) / 1000.0f + (p % 9 == 0 ? 0.5f : 0.0f);
}

// The reference: the cache as a list of positions, each policy written from its definition.
struct ReferenceCache {
  RetentionPolicy policy;
  std::vector<int64_t> positions;
  std::map<int64_t, float> accumulated;                 // h2o: position → attention received
  std::vector<std::map<int64_t, float>> observations;   // snapkv: the last w queries' weights

  void step(int64_t first, int64_t chunk) {
    for (int64_t q = first; q < first + chunk; ++q) positions.push_back(q);
    for (int64_t q = first; q < first + chunk; ++q) {
      std::map<int64_t, float> seen;
      for (const int64_t p : positions)
        if (p <= q) {
          accumulated[p] += weight(q, p);
          seen[p] = weight(q, p);
        }
      observations.push_back(seen);
    }
    const auto w = static_cast<size_t>(policy.observation_window());
    while (observations.size() > w) observations.erase(observations.begin());
    const auto n = static_cast<int64_t>(positions.size());
    if (policy.is_full() || n <= policy.capacity()) return;
    std::vector<int64_t> keep;
    if (policy.kind == RetentionKind::sinks) {
      for (int64_t i = 0; i < n; ++i)
        if (i < policy.sinks || i >= n - policy.window) keep.push_back(positions[static_cast<size_t>(i)]);
    } else {
      const int64_t recent = policy.kind == RetentionKind::h2o ? policy.budget / 2 : policy.observation_window();
      std::vector<std::pair<float, int64_t>> ranked;  // (score, index) of the older tokens
      for (int64_t i = 0; i < n - recent; ++i) {
        float score = 0;
        if (policy.kind == RetentionKind::h2o) {
          score = accumulated[positions[static_cast<size_t>(i)]];
        } else {
          for (int64_t j = std::max<int64_t>(0, i - 3); j <= std::min(n - recent - 1, i + 3); ++j) {
            float s = 0;
            for (const auto& o : observations) {
              const auto it = o.find(positions[static_cast<size_t>(j)]);
              if (it != o.end()) s += it->second;
            }
            score = std::max(score, s);
          }
        }
        ranked.emplace_back(score, i);
      }
      std::sort(ranked.begin(), ranked.end(),
                [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
      std::vector<int64_t> chosen;
      for (int64_t k = 0; k < policy.budget - recent; ++k) chosen.push_back(ranked[static_cast<size_t>(k)].second);
      for (int64_t i = n - recent; i < n; ++i) chosen.push_back(i);
      std::sort(chosen.begin(), chosen.end());
      for (const int64_t i : chosen) keep.push_back(positions[static_cast<size_t>(i)]);
    }
    positions = keep;
  }
};

}  // namespace

TEST_CASE("KV policies parse; bad ones name the accepted forms", "[kv][retention]") {
  CHECK(RetentionPolicy::parse("full").is_full());
  const RetentionPolicy s = RetentionPolicy::parse("sinks:4,252");
  CHECK(s.kind == RetentionKind::sinks);
  CHECK(s.sinks == 4);
  CHECK(s.window == 252);
  CHECK(s.capacity() == 256);
  CHECK(s.to_string() == "sinks:4,252");
  CHECK(RetentionPolicy::parse("h2o:512").budget == 512);
  CHECK(RetentionPolicy::parse("snapkv:100").observation_window() == 32);
  CHECK(RetentionPolicy::parse("snapkv:20").observation_window() == 10);
  for (const char* bad : {"", "sinks", "sinks:4", "sinks:4,0", "sinks:-1,8", "h2o:", "h2o:1", "h2o:x", "snapkv:3.5",
                          "lru:64", "h2o:99999999999"}) {
    INFO(bad);
    try {
      (void)RetentionPolicy::parse(bad);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::invalid_argument);
      CHECK(std::string(e.what()).find("sinks:S,W") != std::string::npos);
    }
  }
  LoadOptions o;
  o.kv_policy = "h2o:one";
  CHECK_THROWS_AS(Engine::load(test::data_dir() + "/tiny-qwen3moe", o), Error);
}

TEST_CASE("H2O with NaN scores keeps the best numbers; NaN ranks last", "[kv][retention]") {
  // h2o:8 over 16 slots: the last 4 always, then the 4 best scores of slots 0-11. A NaN compared with
  // `>` broke the sort's order (any slot could come out); it now ranks after every number.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> scores = {0.1f, nan, 0.5f, 0.2f, nan, 0.9f, 0.3f, 0.05f, 0.4f, nan, 0.7f, 0.6f,
                                     0.f,  0.f, 0.f,  0.f};
  CHECK(select_kept_slots(RetentionPolicy::parse("h2o:8"), 16, scores) ==
        std::vector<int64_t>{2, 5, 10, 11, 12, 13, 14, 15});
  std::vector<float> mostly_nan(16, nan);
  mostly_nan[7] = 1.f;  // fewer numbers than places: then the NaN slots, lowest first
  CHECK(select_kept_slots(RetentionPolicy::parse("h2o:8"), 16, mostly_nan) ==
        std::vector<int64_t>{0, 1, 2, 7, 12, 13, 14, 15});
}

TEST_CASE("Each policy keeps exactly the tokens its definition says", "[kv][retention]") {
  for (const char* text : {"sinks:4,12", "sinks:0,9", "h2o:16", "h2o:7", "snapkv:24", "snapkv:9", "full"}) {
    for (const int64_t chunk : {int64_t{1}, int64_t{5}}) {
      INFO(text << " chunk " << chunk);
      const RetentionPolicy policy = RetentionPolicy::parse(text);
      ReferenceCache reference{policy, {}, {}, {}};
      RetentionState state(policy);
      std::vector<int64_t> positions;  // what the slots hold
      for (int64_t first = 0; first < 90; first += chunk) {
        const auto before = static_cast<int64_t>(positions.size());
        const int64_t after = before + chunk;
        for (int64_t q = first; q < first + chunk; ++q) positions.push_back(q);
        float* rows = state.attention_rows(chunk, after);
        REQUIRE((rows != nullptr) == policy.needs_attention());
        if (rows)
          for (int64_t i = 0; i < chunk; ++i)
            for (int64_t s = 0; s <= before + i; ++s)
              rows[i * after + s] = weight(first + i, positions[static_cast<size_t>(s)]);
        state.observe(chunk, after);
        const std::vector<int64_t> kept = state.evict(after);
        if (!kept.empty()) {
          std::vector<int64_t> moved;
          for (const int64_t s : kept) moved.push_back(positions[static_cast<size_t>(s)]);
          positions = moved;
        }
        reference.step(first, chunk);
        REQUIRE(positions == reference.positions);
        if (!policy.is_full()) CHECK(static_cast<int64_t>(positions.size()) <= policy.capacity());
      }
    }
  }
}

TEST_CASE("A bounded session runs past its context and keeps what its policy says", "[engine][kv][retention]") {
  const std::vector<int32_t> prompt = {51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280, 78, 87, 220, 73, 287, 9, 40, 41};
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    INFO(name);
    LoadOptions o;
    o.max_context_tokens = 32;
    o.max_sessions = 1;
    o.kv_block_tokens = 4;
    o.kv_type = KvType::f32;
    o.load_tokenizer = false;
    o.max_batch_tokens = 1;  // one token per forward pass: the cache is cut back after each
    o.kv_policy = "sinks:4,8";
    auto engine = Engine::load(test::data_dir() + "/" + name, o);
    auto s = engine->new_session();
    s->prefill(prompt);
    std::vector<int64_t> want = {0, 1, 2, 3};
    for (int64_t p = 12; p < 20; ++p) want.push_back(p);
    CHECK(s->cached_positions() == want);
    // 40 more tokens: positions run to 59, past the context of 32; the cache holds 12.
    for (int i = 0; i < 40; ++i) s->decode(static_cast<int32_t>(100 + i));
    CHECK(s->position() == 60);
    want = {0, 1, 2, 3};
    for (int64_t p = 52; p < 60; ++p) want.push_back(p);
    CHECK(s->cached_positions() == want);
    for (const float v : s->logits()) REQUIRE(std::isfinite(v));
    // Truncating keeps the cached positions before the cut.
    s->truncate(55);
    CHECK(s->cached_positions() == std::vector<int64_t>{0, 1, 2, 3, 52, 53, 54});
    s->decode(7);
    CHECK(s->cached_positions().back() == 55);

    // A chunk larger than the context left by the policy is refused.
    o.kv_policy = "sinks:4,24";
    o.max_batch_tokens = 16;
    auto tight = Engine::load(test::data_dir() + "/" + name, o);
    auto t = tight->new_session();
    t->prefill(std::span<const int32_t>(prompt).first(16));
    t->prefill(std::span<const int32_t>(prompt).first(12));  // 28 then cut back to 28
    CHECK_THROWS_AS(t->prefill(std::span<const int32_t>(prompt).first(8)), Error);  // 28 + 8 > 32

    // h2o and snapkv keep their budget, the most recent tokens among them; a policy whose budget
    // is never reached gives the same logits as the full cache.
    for (const char* policy : {"h2o:10", "snapkv:12"}) {
      INFO(policy);
      o.kv_policy = policy;
      o.max_batch_tokens = 3;
      auto e = Engine::load(test::data_dir() + "/" + name, o);
      auto h = e->new_session();
      h->prefill(prompt);
      const RetentionPolicy p = RetentionPolicy::parse(policy);
      const auto kept = h->cached_positions();
      CHECK(static_cast<int64_t>(kept.size()) == p.capacity());
      const int64_t recent = p.kind == RetentionKind::h2o ? p.budget / 2 : p.observation_window();
      for (int64_t i = 0; i < recent; ++i) CHECK(kept[kept.size() - 1 - static_cast<size_t>(i)] == 19 - i);
    }
    o.kv_policy = "h2o:64";
    auto roomy = Engine::load(test::data_dir() + "/" + name, o);
    o.kv_policy = "";
    auto full = Engine::load(test::data_dir() + "/" + name, o);
    auto a = roomy->new_session();
    auto b = full->new_session();
    a->prefill(prompt, true);
    b->prefill(prompt, true);
    // h2o reads attention probabilities, so its attention runs on the reference kernel, the full
    // cache's on the flash kernel (fast_attention.cpp): float32 rounding apart, the same logits.
    CHECK(test::relative_max_error(a->all_logits(), b->all_logits()) <= 2e-6);
  }
}

TEST_CASE("Perplexity with --kv-compare: KL of identical caches is 0, of a compressed one positive", "[engine][kv][retention]") {
  const std::vector<float> p = {1.0f, 2.0f, 0.5f}, q = {1.5f, 1.0f, 0.5f};
  // KL(p‖q) by hand: softmax then Σ p log(p/q).
  double zp = 0, zq = 0;
  for (size_t i = 0; i < 3; ++i) {
    zp += std::exp(static_cast<double>(p[i]));
    zq += std::exp(static_cast<double>(q[i]));
  }
  double kl = 0;
  for (size_t i = 0; i < 3; ++i) {
    const double pi = std::exp(static_cast<double>(p[i])) / zp, qi = std::exp(static_cast<double>(q[i])) / zq;
    kl += pi * std::log(pi / qi);
  }
  CHECK(logits_kl_divergence(p, q) == Approx(kl).epsilon(1e-12));
  CHECK(logits_kl_divergence(p, p) == 0.0);

  std::mt19937 rng(5);
  std::vector<int32_t> tokens(64);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % 500);
  const std::string dir = test::data_dir() + "/tiny-qwen3moe";
  auto exact = test::load_for_test(dir, 16, 512, KvType::f32);
  PerplexityOptions options;
  options.ctx = 32;
  options.exact = exact.get();
  auto same = test::load_for_test(dir, 16, 512, KvType::f32);
  const PerplexityResult r = evaluate_perplexity(*same, tokens, options);
  CHECK(r.kl_mean == 0.0);
  CHECK(r.ppl_exact == r.ppl);
  LoadOptions o;
  o.max_context_tokens = 32;
  o.max_sessions = 1;
  o.kv_type = KvType::int4;
  o.kv_policy = "sinks:2,8";
  o.max_batch_tokens = 4;
  o.load_tokenizer = false;
  auto compressed = Engine::load(dir, o);
  const PerplexityResult c = evaluate_perplexity(*compressed, tokens, options);
  CHECK(c.ppl_exact == r.ppl);
  CHECK(c.kl_mean > 0.0);
  CHECK(c.ppl != r.ppl);
}
