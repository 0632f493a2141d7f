// The GPU expert cache's host side (issue 17, item 4): routed pairs with a negative id add nothing
// on the CPU (fast single- and two-dispatch paths and the reference operator, each bit for bit
// against the same pairs given weight 0), the split of pairs by what a GPU holds, and the forward
// pass's cache against a stand-in GPU (a CPU backend that says it is cuda:0 and holds experts by
// number): logits as without the cache, every pair counted, and a refresh holding the most routed
// experts. test_cuda runs the same forward pass on a real GPU.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "backend/cpu/fast_ops.hpp"
#include "support/fixtures.hpp"
#include "support/forward_runs.hpp"
#include "support/random_experts.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/expert_cache_split.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/backend/forwarding_backend.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_files.hpp"

using namespace tandem;

namespace {

// A CPU backend that answers as cuda:0 and holds experts by number (their rows stay where they are):
// the forward pass takes it for a GPU with an expert cache. Records the pairs it split per layer.
class StandInGpu final : public ForwardingBackend {
 public:
  explicit StandInGpu(Backend& inner) : ForwardingBackend(inner) {}
  Device device() const override { return Device::cuda(0); }
  bool cache_experts(const ExpertWeights& experts, std::span<const int32_t> ids) override {
    held[&experts].assign(ids.begin(), ids.end());
    ++cache_calls;
    return true;
  }
  void split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs, int32_t* held_ids,
                            int32_t* rest, uint32_t* counts) override {
    const auto count = static_cast<int64_t>(experts.count());
    std::vector<int32_t> map(static_cast<size_t>(count), 0);
    for (const int32_t e : held.at(&experts)) map[static_cast<size_t>(e)] = 1;
    tandem::split_cached_experts(ids, pairs, map.data(), count, held_ids, rest, counts);
    std::vector<int64_t>& seen = routed[&experts];
    seen.resize(static_cast<size_t>(count));
    for (int64_t p = 0; p < pairs; ++p) ++seen[static_cast<size_t>(ids[p])];
    for (int64_t p = 0; p < pairs; ++p) held_pairs += held_ids[p] >= 0;
    split_pairs += pairs;
  }
  std::map<const ExpertWeights*, std::vector<int32_t>> held;
  std::map<const ExpertWeights*, std::vector<int64_t>> routed;
  int64_t cache_calls = 0, split_pairs = 0, held_pairs = 0;
};

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}
double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

}  // namespace

TEST_CASE("routed experts: a pair with a negative id adds nothing, bit for bit as weight 0", "[engine][moe][expert-cache]") {
  std::mt19937 rng(11);
  const int64_t count = 8, hidden = 256, inter = 512;
  const test::RandomExperts random(count, hidden, inter, DType::q4_k, DType::q6_k, rng);
  const ExpertWeights& experts = random.weights;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> weight(0.05f, 1.0f);
  for (const int64_t tokens : {1, 3, 40}) {
    const int64_t top_k = 4, pairs = tokens * top_k;
    INFO("tokens=" << tokens);
    std::vector<float> x(static_cast<size_t>(tokens * hidden));
    for (float& v : x) v = normal(rng);
    std::vector<int32_t> ids(static_cast<size_t>(pairs));
    std::vector<float> w(static_cast<size_t>(pairs));
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t s = 0; s < top_k; ++s) {
        ids[static_cast<size_t>(t * top_k + s)] = static_cast<int32_t>((t * 3 + s * 2 + (t % 2)) % count);
        w[static_cast<size_t>(t * top_k + s)] = weight(rng);
      }
    // The split a GPU holding experts 1, 4 and 6 gives: the CPU keeps the rest.
    std::vector<int32_t> map(static_cast<size_t>(count), 0);
    map[1] = map[4] = map[6] = 1;
    std::vector<int32_t> held(static_cast<size_t>(pairs)), rest(static_cast<size_t>(pairs));
    std::vector<uint32_t> counts(static_cast<size_t>(count), 0);
    split_cached_experts(ids.data(), pairs, map.data(), count, held.data(), rest.data(), counts.data());
    std::vector<float> w_rest = w;  // the same pairs, the held ones weighted 0
    for (int64_t p = 0; p < pairs; ++p) {
      const int32_t e = ids[static_cast<size_t>(p)];
      CHECK((map[static_cast<size_t>(e)] ? held[static_cast<size_t>(p)] : rest[static_cast<size_t>(p)]) == e);
      CHECK((map[static_cast<size_t>(e)] ? rest[static_cast<size_t>(p)] : held[static_cast<size_t>(p)]) == -1);
      if (map[static_cast<size_t>(e)]) w_rest[static_cast<size_t>(p)] = 0.0f;
    }
    for (int64_t e = 0; e < count; ++e)
      CHECK(counts[static_cast<size_t>(e)] ==
            static_cast<uint32_t>(std::count(ids.begin(), ids.end(), static_cast<int32_t>(e))));
    ThreadPool pool(2);
    for (const int64_t single_rows : {int64_t{0}, int64_t{256}}) {  // two dispatches, then one
      INFO("single dispatch up to " << single_rows << " rows");
      FastCpuOps ops(pool, kernels::best_isa_level());
      ops.set_single_dispatch_rows(single_rows);
      std::vector<float> got(x.size(), -1.0f), expected(x.size(), -2.0f);
      REQUIRE(ops.moe_routed_experts(experts, x.data(), tokens, hidden, rest.data(), w.data(), top_k, got.data()));
      REQUIRE(ops.moe_routed_experts(experts, x.data(), tokens, hidden, ids.data(), w_rest.data(), top_k,
                                     expected.data()));
      CHECK(std::memcmp(got.data(), expected.data(), got.size() * 4) == 0);
      // Every pair elsewhere: zeros.
      std::vector<int32_t> none(static_cast<size_t>(pairs), -1);
      REQUIRE(ops.moe_routed_experts(experts, x.data(), tokens, hidden, none.data(), w.data(), top_k, got.data()));
      CHECK(max_abs(got) == 0.0);
    }
    FeedForwardWorkspace ws;
    std::vector<float> got(x.size(), -1.0f), expected(x.size(), -2.0f);
    moe_routed_experts(&pool, experts, x.data(), tokens, hidden, rest.data(), w.data(), top_k, ws, got.data());
    moe_routed_experts(&pool, experts, x.data(), tokens, hidden, ids.data(), w_rest.data(), top_k, ws, expected.data());
    CHECK(std::memcmp(got.data(), expected.data(), got.size() * 4) == 0);
  }
  // An id past the layer's experts is a bug upstream, never skipped.
  std::vector<float> x(static_cast<size_t>(hidden), 0.5f), out(static_cast<size_t>(hidden));
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(count)};
  const std::vector<float> w = {0.5f, 0.5f};
  ThreadPool pool(1);
  FastCpuOps ops(pool, kernels::best_isa_level());
  CHECK_THROWS_AS(ops.moe_routed_experts(experts, x.data(), 1, hidden, bad.data(), w.data(), 2, out.data()), Error);
  std::vector<int32_t> held(2), rest(2);
  std::vector<int32_t> map(static_cast<size_t>(count), 0);
  CHECK_THROWS_AS(split_cached_experts(bad.data(), 2, map.data(), count, held.data(), rest.data(), nullptr), Error);
}

TEST_CASE("forward pass: the expert cache on a stand-in GPU gives the logits without it, counts every pair, "
          "and a refresh holds the most routed experts",
          "[engine][moe][expert-cache]") {
  const std::vector<int32_t> prompt = {4, 8, 15, 16, 23, 42, 7, 9, 1, 33, 21, 2};
  for (const std::string& model : {test::data_dir() + "/tiny-qwen3moe", test::data_dir() + "/tiny-deepseekv3"}) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    const Weights weights = bind_weights(files);
    const ModelConfig& c = files.config;
    auto cpu = make_cpu_backend(2);
    auto gpu_inner = make_cpu_backend(1);
    StandInGpu gpu(*gpu_inner);
    // Routed experts on the CPU, everything else on the stand-in GPU (the hybrid placement).
    auto route = [&](WeightGroup g, int64_t) -> Backend& {
      return g == WeightGroup::experts ? static_cast<Backend&>(*cpu) : gpu;
    };
    KvPool kv(test::small_f32_pool(c));
    auto run = [&](ForwardPass& forward, std::span<const int32_t> ids) {
      return test::prompt_logits(forward, kv, ids, c.vocab_size);
    };
    ForwardPass plain(c, weights, route, kv, 64);
    const std::vector<float> expected = run(plain, prompt);
    CHECK(plain.expert_cache_layers() == 0);

    ForwardPass cached(c, weights, route, kv, 64);
    CHECK_THROWS_AS(cached.set_expert_cache(-1), Error);
    const int64_t moe_layers = std::count_if(weights.layers.begin(), weights.layers.end(),
                                             [](const LayerWeights& l) { return l.is_moe; });
    const int64_t held = c.num_experts / 2;
    REQUIRE(cached.set_expert_cache(held) == moe_layers);
    CHECK_THROWS_AS(cached.set_expert_cache(held + 1), Error);  // set once
    for (const auto& [experts, ids] : gpu.held) {  // at first, the lowest numbers
      REQUIRE(static_cast<int64_t>(ids.size()) == held);
      for (int64_t i = 0; i < held; ++i) CHECK(ids[static_cast<size_t>(i)] == i);
    }
    const std::vector<float> got = run(cached, prompt);
    // The held experts' share is summed apart from the rest: the same terms in another order.
    CHECK(max_diff(got, expected) <= 1e-5 * std::max(1.0, max_abs(expected)));
    CHECK(gpu.held_pairs > 0);
    CHECK(gpu.held_pairs < gpu.split_pairs);
    CHECK(gpu.split_pairs == static_cast<int64_t>(prompt.size()) * c.num_experts_per_tok * moe_layers);
    ForwardPass::ExpertCacheStats stats = cached.expert_cache_stats();
    CHECK(stats.layers == moe_layers);
    CHECK(stats.experts_per_layer == held);
    CHECK(stats.counted_pairs == static_cast<uint64_t>(gpu.split_pairs));
    CHECK(stats.held_pairs == static_cast<uint64_t>(gpu.held_pairs));

    // A refresh before enough tokens ran does nothing; then each layer holds its most routed experts.
    CHECK(cached.refresh_expert_cache(1000) == 0);
    const int64_t calls_before = gpu.cache_calls;
    const int64_t copied = cached.refresh_expert_cache(1);
    int64_t changed = 0;
    for (const auto& [experts, ids] : gpu.held) {
      const std::vector<int64_t>& seen = gpu.routed.at(experts);
      int64_t least_held = INT64_MAX, most_left = -1;
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const bool is_held = std::find(ids.begin(), ids.end(), static_cast<int32_t>(e)) != ids.end();
        if (is_held) least_held = std::min(least_held, seen[static_cast<size_t>(e)]);
        else most_left = std::max(most_left, seen[static_cast<size_t>(e)]);
      }
      CHECK(least_held >= most_left);
      for (const int32_t e : ids) changed += e >= held;  // not held before
    }
    CHECK(copied == changed);
    CHECK(gpu.cache_calls - calls_before <= moe_layers);
    // Still the same logits with the new choice; the counts went on from halved ones.
    const std::vector<float> again = run(cached, prompt);
    CHECK(max_diff(again, expected) <= 1e-5 * std::max(1.0, max_abs(expected)));
    stats = cached.expert_cache_stats();
    CHECK(stats.counted_pairs == static_cast<uint64_t>(gpu.split_pairs));
    CHECK(stats.held_pairs == static_cast<uint64_t>(gpu.held_pairs));

    // Deferral with the cache: the kept part is split, the deferred part stays on the CPU.
    if (c.num_experts_per_tok >= 2) {
      ForwardPass deferred_plain(c, weights, route, kv, 64, 1);
      ForwardPass deferred_cached(c, weights, route, kv, 64, 1);
      REQUIRE(deferred_cached.set_expert_cache(held) == moe_layers);
      const std::vector<float> a = run(deferred_plain, prompt), b = run(deferred_cached, prompt);
      CHECK(max_diff(a, b) <= 1e-5 * std::max(1.0, max_abs(a)));
    }
  }
}
