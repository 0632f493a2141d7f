// The fast MoE and MLP operators' scheduling (src/backend/cpu/fast_ops.cpp): the single-dispatch
// path (per-expert readiness instead of a barrier, down items summed per output tile) against the
// two-dispatch path, bit for bit, at several thread counts (more threads than cores included), for
// decode-sized batches, skewed routing (one expert with many rows: the tile kernels), several top-k,
// every activation format, and widths that are not a multiple of the 16-row tile. The two paths and
// the reference operators are compared in test_fast_kernels.cpp.
#include <catch2/catch.hpp>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "backend/cpu/fast_ops.hpp"
#include "backend/cpu/kernels/int8_strips.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/partitioned_items.hpp"
#include "support/random_experts.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/formats/dequantize.hpp"

using namespace tandem;

namespace {

struct Routing {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// Distinct experts per token; `skewed`: every token's first expert is expert 0 (one big group).
Routing random_routing(int64_t tokens, int64_t top_k, int64_t count, bool skewed, std::mt19937& rng) {
  Routing r;
  std::uniform_real_distribution<float> w(0.05f, 1.0f);
  std::vector<int32_t> pool(static_cast<size_t>(count));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t e = 0; e < count; ++e) pool[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    // A partial Fisher-Yates shuffle; skewed keeps expert 0 in the first slot.
    for (int64_t s = skewed ? 1 : 0; s < top_k; ++s)
      std::swap(pool[static_cast<size_t>(s)], pool[static_cast<size_t>(s + static_cast<int64_t>(rng() % static_cast<uint32_t>(count - s)))]);
    for (int64_t s = 0; s < top_k; ++s) {
      r.ids.push_back(pool[static_cast<size_t>(s)]);
      r.weights.push_back(w(rng));
    }
  }
  return r;
}

std::vector<float> random_rows(int64_t rows, int64_t width, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * width));
  for (auto& v : x) v = normal(rng);
  return x;
}

}  // namespace

TEST_CASE("fast MoE and MLP: one dispatch equals two, bit for bit, at any thread count",
          "[engine][kernels][moe]") {
  struct Mix {
    DType gate, down;
    int64_t hidden, inter;  // the float types take widths that are not a multiple of 16
  };
  const Mix mixes[] = {{DType::q4_k, DType::q6_k, 512, 768},  {DType::q5_k, DType::q8_0, 256, 512},
                       {DType::iq4_xs, DType::q4_0, 256, 256}, {DType::q4_k, DType::q5_0, 256, 1408 / 2}, {DType::bf16, DType::f32, 200, 72},
                       {DType::f16, DType::f8_e4m3, 256, 136}};
  // Twice: the experts read from their rows, then repacked into strips at preparation (Q4_K).
  const bool repack = GENERATE(false, true);
  INFO((repack ? "repacked" : "rows as stored"));
  std::mt19937 rng(7);
  const kernels::IsaLevel level = kernels::best_isa_level();
  for (const Mix& mix : mixes) {
    const int64_t count = 12;
    const test::RandomExperts experts(count, mix.hidden, mix.inter, mix.gate, mix.down, rng);
    const auto prepare = [&](FastCpuOps& ops) {
      if (!repack) return;
      for (const auto* set : {&experts.weights.gate, &experts.weights.up, &experts.weights.down})
        for (const LinearWeight& w : *set) ops.prepare(w);
      CHECK((ops.repacked_bytes() > 0) == (mix.gate == DType::q4_k && level >= kernels::IsaLevel::avx512));
    };
    struct Shape {
      int64_t tokens, top_k;
      bool skewed;
    };
    // 1 token (decode), a few, 16 x top-8 (128 rows), and skewed batches where expert 0 gets every
    // token: 40 rows (tile kernels) and 300 rows (two 256-row blocks) in one group.
    for (const Shape shape : {Shape{1, 8, false}, Shape{1, 2, false}, Shape{3, 4, false}, Shape{16, 8, false},
                              Shape{40, 2, true}, Shape{300, 2, true}}) {
      INFO(dtype_name(mix.gate) << "/" << dtype_name(mix.down) << " tokens=" << shape.tokens
                                << " top_k=" << shape.top_k << (shape.skewed ? " skewed" : ""));
      const Routing routing = random_routing(shape.tokens, shape.top_k, count, shape.skewed, rng);
      const std::vector<float> x = random_rows(shape.tokens, mix.hidden, rng);
      std::vector<float> two_dispatch(x.size()), mlp_two_dispatch(x.size());
      {
        ThreadPool pool(2);
        FastCpuOps ops(pool, level);
        prepare(ops);
        ops.set_single_dispatch_rows(0);
        REQUIRE(ops.moe_routed_experts(experts.weights, x.data(), shape.tokens, mix.hidden, routing.ids.data(),
                                       routing.weights.data(), shape.top_k, two_dispatch.data()));
        REQUIRE(ops.silu_glu_mlp(experts.weights.gate[3], experts.weights.up[3], experts.weights.down[3], x.data(),
                                 shape.tokens, mlp_two_dispatch.data()));
      }
      bool finite = true;
      for (float v : two_dispatch) finite = finite && std::isfinite(v);
      REQUIRE(finite);
      for (const int threads : {1, 2, 3, 5}) {
        INFO("threads=" << threads);
        ThreadPool pool(threads);
        FastCpuOps ops(pool, level);
        prepare(ops);
        std::vector<float> y(x.size(), -1.0f), mlp(x.size(), -1.0f);
        for (int repeat = 0; repeat < 2; ++repeat) {  // the second call reuses the grown workspace
          REQUIRE(ops.moe_routed_experts(experts.weights, x.data(), shape.tokens, mix.hidden, routing.ids.data(),
                                         routing.weights.data(), shape.top_k, y.data()));
          CHECK(std::memcmp(y.data(), two_dispatch.data(), y.size() * 4) == 0);
          REQUIRE(ops.silu_glu_mlp(experts.weights.gate[3], experts.weights.up[3], experts.weights.down[3],
                                   x.data(), shape.tokens, mlp.data()));
          CHECK(std::memcmp(mlp.data(), mlp_two_dispatch.data(), mlp.size() * 4) == 0);
        }
        // Called from inside a loop of its own pool: the single dispatch runs inline, one thread
        // taking every item (its own part, then all the others).
        std::fill(y.begin(), y.end(), -1.0f);
        std::fill(mlp.begin(), mlp.end(), -1.0f);
        pool.parallel_for(1, [&](int64_t, int64_t, int) {
          ops.moe_routed_experts(experts.weights, x.data(), shape.tokens, mix.hidden, routing.ids.data(),
                                 routing.weights.data(), shape.top_k, y.data());
          ops.silu_glu_mlp(experts.weights.gate[3], experts.weights.up[3], experts.weights.down[3], x.data(),
                           shape.tokens, mlp.data());
        });
        CHECK(std::memcmp(y.data(), two_dispatch.data(), y.size() * 4) == 0);
        CHECK(std::memcmp(mlp.data(), mlp_two_dispatch.data(), mlp.size() * 4) == 0);
      }
    }
  }
}

TEST_CASE("PartitionedItems: every item taken exactly once, owners first, thieves from the back",
          "[engine][kernels][moe]") {
  for (const int parts : {1, 3, 8}) {
    PartitionedItems queue(parts);
    for (const int64_t items : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{1001}}) {
      INFO("parts=" << parts << " items=" << items);
      // One thread alone (the others never came): its own part forwards, then each other part backwards.
      queue.reset(items);
      std::vector<int64_t> order;
      int victim = 1 % parts;
      for (int64_t i = queue.take(1 % parts, victim); i >= 0; i = queue.take(1 % parts, victim)) order.push_back(i);
      REQUIRE(static_cast<int64_t>(order.size()) == items);
      std::vector<int64_t> expected;
      const auto begin = [&](int p) { return items * p / parts; };
      for (int64_t i = begin(1 % parts); i < begin(1 % parts + 1); ++i) expected.push_back(i);
      for (int k = 1; k < parts; ++k) {
        const int p = (1 + k) % parts;
        for (int64_t i = begin(p + 1) - 1; i >= begin(p); --i) expected.push_back(i);
      }
      CHECK(order == expected);
      // Many threads at once (more than cores): each item once.
      queue.reset(items);
      std::vector<std::atomic<int>> taken(static_cast<size_t>(items));
      std::vector<std::thread> threads;
      for (int t = 0; t < 6; ++t)
        threads.emplace_back([&, t] {
          const int own = t % parts;
          int v = own;
          for (int64_t i = queue.take(own, v); i >= 0; i = queue.take(own, v))
            taken[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
        });
      for (auto& th : threads) th.join();
      for (const auto& n : taken) CHECK(n.load() == 1);
    }
  }
}

TEST_CASE("fast MoE on int8 strips (emulated AMX): whole 16-row runs read them, within the "
          "requantisation's error of the strips as stored",
          "[engine][kernels][moe][amx]") {
  if (!kernels::isa_level_supported(kernels::IsaLevel::avx512)) {
    WARN("SKIPPED: this CPU lacks avx512: the emulated AMX kernels are not tested here");
    return;
  }
  std::mt19937 rng(3);
  const int64_t count = 4, hidden = 512, inter = 256, tokens = 40, top_k = 2;
  const test::RandomExperts experts(count, hidden, inter, DType::q4_k, DType::q6_k, rng);
  const Routing routing = random_routing(tokens, top_k, count, /*skewed=*/true, rng);
  const std::vector<float> x = random_rows(tokens, hidden, rng);
  const kernels::KernelTable table = kernels::make_emulated_amx_table();
  const auto run = [&](bool int8, int64_t& copy_bytes) {
    ThreadPool pool(2);
    FastCpuOps ops(pool, kernels::IsaLevel::avx512, table);
    for (const auto* set : {&experts.weights.gate, &experts.weights.up, &experts.weights.down})
      for (const LinearWeight& w : *set) ops.prepare(w, int8);
    copy_bytes = ops.repacked_bytes();
    std::vector<float> y(static_cast<size_t>(tokens * hidden));
    REQUIRE(ops.moe_routed_experts(experts.weights, x.data(), tokens, hidden, routing.ids.data(),
                                   routing.weights.data(), top_k, y.data()));
    return y;
  };
  int64_t strips_bytes = 0, with_int8_bytes = 0;
  const std::vector<float> stored = run(false, strips_bytes);
  const std::vector<float> requantised = run(true, with_int8_bytes);
  // Gate and up (Q4_K, 256 × 512) and down (Q6_K, 512 × 256) of 4 experts, 1.016 bytes a weight.
  CHECK(with_int8_bytes - strips_bytes ==
        count * (2 * kernels::int8_strips_bytes(DType::q4_k, inter, hidden) +
                 kernels::int8_strips_bytes(DType::q6_k, hidden, inter)));
  double max_diff = 0, max_y = 0;
  for (size_t i = 0; i < stored.size(); ++i) {
    REQUIRE(std::isfinite(requantised[i]));
    max_diff = std::max(max_diff, std::fabs(double(requantised[i]) - stored[i]));
    max_y = std::max(max_y, std::fabs(double(stored[i])));
  }
  CHECK(max_diff > 0);               // the int8 kernel ran (expert 0 has 40 rows: two 16-row runs)
  CHECK(max_diff < 0.02 * max_y);    // and stayed within the requantisation's error
  // What the engine's memory guard counts before preparing: the same bytes, with and without.
  ThreadPool pool(1);
  const FastCpuOps counter(pool, kernels::IsaLevel::avx512, table);
  const LinearWeight& down = experts.weights.down[0];
  CHECK(counter.repack_bytes(down, true) - counter.repack_bytes(down, false) ==
        kernels::int8_strips_bytes(DType::q6_k, hidden, inter));
  CHECK(counter.repack_bytes(down, false) == kernels::repacked_bytes(kernels::WeightKind::q6_k, hidden, inter));
}
