// The routed experts' submit/wait split: ThreadPool tasks (run on the pool's driver worker while
// the submitter goes on; join helps and rethrows), the CPU backend's moe_routed_experts_submit
// (returns before the work is done; the wait gives the synchronous call's numbers bit for bit), and
// the forward pass with the experts on a backend of their own (submitted, the shared expert and,
// with deferral, the next layer issued meanwhile) against one backend, bit for bit.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/fixtures.hpp"
#include "support/random_experts.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_files.hpp"

using namespace tandem;

namespace {

using Clock = std::chrono::steady_clock;

// Waits up to 20 s for `flag`; false if it never came (the test then fails instead of hanging).
bool wait_for(const std::atomic<bool>& flag) {
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!flag.load()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

}  // namespace

TEST_CASE("thread pool: a task runs on the pool after submit returns; join helps with its loops",
          "[thread_pool][moe_submit]") {
  for (int threads : {2, 3, 5}) {
    INFO("threads " << threads);
    ThreadPool pool(threads);
    std::atomic<bool> submitted{false}, saw_submit_return{false};
    const auto joiner = std::this_thread::get_id();
    std::atomic<int64_t> chunks_by_joiner{0};
    std::atomic<bool> bad_worker{false}, joiner_not_worker0{false};
    constexpr int kLoops = 40;
    constexpr int64_t kItems = 48;
    std::vector<std::atomic<int>> hits(static_cast<size_t>(kLoops * kItems));
    const uint64_t ticket = pool.submit([&] {
      // The submitter opens this gate only after submit returned: a synchronous submit never would.
      saw_submit_return = wait_for(submitted);
      for (int loop = 0; loop < kLoops; ++loop)
        pool.parallel_for(kItems, [&](int64_t begin, int64_t end, int worker) {
          if (worker < 0 || worker >= threads) bad_worker = true;
          if (std::this_thread::get_id() == joiner) {
            chunks_by_joiner += end - begin;
            if (worker != 0) joiner_not_worker0 = true;
          }
          for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(loop * kItems + i)].fetch_add(1);
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        });
    });
    CHECK(ticket >= 1);
    submitted = true;
    pool.join(ticket);
    CHECK(pool.done(ticket));
    CHECK(saw_submit_return.load());
    CHECK_FALSE(bad_worker.load());
    CHECK_FALSE(joiner_not_worker0.load());
    for (const auto& h : hits) CHECK(h.load() == 1);
    // 40 loops of ~10 ms: the joining thread took part in some of them.
    CHECK(chunks_by_joiner.load() > 0);
  }
}

TEST_CASE("thread pool: tasks run in submission order; a task's exception reaches its join once",
          "[thread_pool][moe_submit]") {
  for (int threads : {1, 3}) {
    INFO("threads " << threads);
    ThreadPool pool(threads);
    std::mutex mutex;
    std::vector<int> order;
    uint64_t last = 0;
    for (int i = 0; i < 5; ++i)
      last = pool.submit([&, i] {
        std::atomic<int64_t> sum{0};
        pool.parallel_for(100, [&](int64_t b, int64_t e, int) { sum += e - b; });
        std::lock_guard lock(mutex);
        order.push_back(sum.load() == 100 ? i : -1);
      });
    pool.join(last);
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4});

    const uint64_t failing = pool.submit([&] {
      pool.parallel_for(64, [](int64_t b, int64_t e, int) {
        if (b <= 33 && 33 < e) throw std::runtime_error("item 33");
      });
    });
    std::atomic<bool> after_ran{false};
    const uint64_t after = pool.submit([&] { after_ran = true; });
    CHECK_THROWS_WITH(pool.join(after), "item 33");  // a later ticket covers the failed one
    CHECK(after_ran.load());                         // the queue went on after the failure
    CHECK_NOTHROW(pool.join(failing));               // rethrown once
    std::atomic<int64_t> count{0};
    pool.parallel_for(1000, [&](int64_t b, int64_t e, int) { count += e - b; });
    CHECK(count.load() == 1000);
  }
}

TEST_CASE("thread pool: a parallel_for from another thread runs while a task holds the driver",
          "[thread_pool][moe_submit]") {
  ThreadPool pool(3);
  std::atomic<bool> inside{false}, release{false}, released{false};
  const uint64_t ticket = pool.submit([&] {
    inside = true;
    released = wait_for(release);
  });
  REQUIRE(wait_for(inside));
  // The driver is busy: the loop runs on the caller and the other workers, every index once.
  std::vector<std::atomic<int>> hits(500);
  std::atomic<bool> bad_worker{false};
  pool.parallel_for(500, [&](int64_t b, int64_t e, int worker) {
    if (worker < 0 || worker >= 2) bad_worker = true;  // not the driver's index (2)
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (const auto& h : hits) CHECK(h.load() == 1);
  CHECK_FALSE(bad_worker.load());
  release = true;
  pool.join(ticket);
  CHECK(released.load());
}

TEST_CASE("thread pool: short tasks, joins and loops from the submitter interleaved (no lost wake-up)",
          "[thread_pool][moe_submit]") {
  for (int threads : {2, 4}) {
    INFO("threads " << threads);
    ThreadPool pool(threads);
    std::atomic<int64_t> task_items{0}, host_items{0};
    uint64_t ticket = 0;
    for (int round = 0; round < 2000; ++round) {
      const int64_t n = 1 + round % 7;
      ticket = pool.submit([&, n] {
        for (int loop = 0; loop < 3; ++loop)
          pool.parallel_for(n, [&](int64_t b, int64_t e, int) { task_items += e - b; });
      });
      if (round % 3 == 0) pool.parallel_for(n, [&](int64_t b, int64_t e, int) { host_items += e - b; });
      if (round % 2 == 0) pool.join(ticket);
    }
    pool.join(ticket);
    int64_t want_task = 0, want_host = 0;
    for (int round = 0; round < 2000; ++round) {
      want_task += 3 * (1 + round % 7);
      if (round % 3 == 0) want_host += 1 + round % 7;
    }
    CHECK(task_items.load() == want_task);
    CHECK(host_items.load() == want_host);
  }
}

namespace {

struct Routing {
  std::vector<float> x, weights;
  std::vector<int32_t> ids;
};

Routing random_routing(int64_t tokens, int64_t hidden, int64_t experts, int64_t top_k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Routing r;
  r.x.resize(static_cast<size_t>(tokens * hidden));
  for (float& v : r.x) v = dist(rng);
  std::vector<int32_t> all(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t e = 0; e < experts; ++e) all[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    std::shuffle(all.begin(), all.end(), rng);
    float sum = 0;
    for (int64_t s = 0; s < top_k; ++s) {
      r.ids.push_back(all[static_cast<size_t>(s)]);
      r.weights.push_back(std::fabs(dist(rng)) + 0.1f);
      sum += r.weights.back();
    }
    for (int64_t s = 0; s < top_k; ++s) r.weights[r.weights.size() - 1 - static_cast<size_t>(s)] /= sum;
  }
  return r;
}

}  // namespace

TEST_CASE("cpu backend: submitted routed experts equal the synchronous call bit for bit",
          "[backend][moe_submit]") {
  const int64_t hidden = 128, inter = 96, count = 8, top_k = 3;
  std::mt19937 rng(5);
  const test::RandomExperts experts(count, hidden, inter, DType::f32, DType::f32, rng);  // both kernels read f32
  for (CpuKernels kernels : {CpuKernels::fast, CpuKernels::reference})
    for (int threads : {1, 2, 4})
      for (int64_t tokens : {int64_t{1}, int64_t{7}, int64_t{70}}) {
        INFO(cpu_kernels_name(kernels) << " threads " << threads << " tokens " << tokens);
        auto b = make_cpu_backend(threads, kernels);
        const Routing r = random_routing(tokens, hidden, count, top_k, static_cast<uint32_t>(tokens));
        std::vector<float> sync(static_cast<size_t>(tokens * hidden)), async(sync.size(), NAN),
            again(sync.size());
        b->moe_routed_experts(experts.weights, r.x.data(), tokens, hidden, r.ids.data(), r.weights.data(),
                              top_k, sync.data());
        auto done = b->create_event();
        b->moe_routed_experts_submit(experts.weights, r.x.data(), tokens, hidden, r.ids.data(),
                                     r.weights.data(), top_k, async.data());
        b->record(*done);
        done->synchronize();
        CHECK(std::memcmp(async.data(), sync.data(), sync.size() * sizeof(float)) == 0);
        // Two submitted back to back, then a synchronous op: the stream's order holds.
        std::vector<float> first(sync.size(), NAN), added(sync.size());
        b->moe_routed_experts_submit(experts.weights, r.x.data(), tokens, hidden, r.ids.data(),
                                     r.weights.data(), top_k, first.data());
        b->moe_routed_experts_submit(experts.weights, r.x.data(), tokens, hidden, r.ids.data(),
                                     r.weights.data(), top_k, again.data());
        b->add(first.data(), again.data(), tokens * hidden, added.data());
        for (size_t i = 0; i < sync.size(); ++i) REQUIRE(added[i] == sync[i] + sync[i]);
        // An expert id out of range: the error comes with the wait.
        std::vector<int32_t> bad = r.ids;
        bad[0] = static_cast<int32_t>(count);
        b->moe_routed_experts_submit(experts.weights, r.x.data(), tokens, hidden, bad.data(),
                                     r.weights.data(), top_k, first.data());
        b->record(*done);
        CHECK_THROWS_AS(done->synchronize(), Error);
        b->synchronize();  // reported once
      }
}

TEST_CASE("cpu backend: a submit returns before its work is done; another backend works meanwhile",
          "[backend][moe_submit]") {
  // A layer big enough that the reference kernels take a while (~0.1-1 s on two threads).
  const int64_t hidden = 512, inter = 1024, count = 16, top_k = 4, tokens = 192;
  std::mt19937 rng(9);
  const test::RandomExperts experts(count, hidden, inter, DType::f32, DType::f32, rng);
  const Routing r = random_routing(tokens, hidden, count, top_k, 3);
  auto b = make_cpu_backend(2, CpuKernels::reference);
  auto other = make_cpu_backend(1, CpuKernels::reference);
  std::vector<float> sync(static_cast<size_t>(tokens * hidden)), async(sync.size(), NAN);
  const auto s0 = Clock::now();
  b->moe_routed_experts(experts.weights, r.x.data(), tokens, hidden, r.ids.data(), r.weights.data(), top_k,
                        sync.data());
  const double sync_seconds = std::chrono::duration<double>(Clock::now() - s0).count();

  auto done = b->create_event();
  const auto t0 = Clock::now();
  b->moe_routed_experts_submit(experts.weights, r.x.data(), tokens, hidden, r.ids.data(), r.weights.data(),
                               top_k, async.data());
  const double submit_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  b->record(*done);
  // Meanwhile: a linear layer on the other backend (a GPU's shared expert in the hybrid case).
  std::vector<float> y(static_cast<size_t>(tokens * inter)), y_alone(y.size());
  other->linear(experts.weights.gate[3], r.x.data(), tokens, y.data());
  done->synchronize();
  const double total_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  WARN("routed experts: synchronous " << sync_seconds * 1e3 << " ms; submit returned after "
                                      << submit_seconds * 1e3 << " ms, done after " << total_seconds * 1e3
                                      << " ms");
  CHECK(submit_seconds < 0.25 * total_seconds);
  CHECK(std::memcmp(async.data(), sync.data(), sync.size() * sizeof(float)) == 0);
  other->linear(experts.weights.gate[3], r.x.data(), tokens, y_alone.data());
  CHECK(y == y_alone);
}

namespace {

std::vector<float> run_pass(const ModelFiles& files, const Weights& weights,
                            ForwardPass::BackendForRole route, const std::vector<int32_t>& ids, int64_t defer,
                            int64_t chunk_tokens) {
  const ModelConfig& c = files.config;
  KvPoolSpec spec{c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa,
                  c.num_layers,
                  c.kv_values_per_token_per_layer(),
                  4,
                  16,
                  Device::cpu()};
  spec.dtype = KvType::f32;
  if (spec.layout == KvLayout::mla_latent) spec.rope_values = c.qk_rope_head_dim;
  KvPool kv(spec);
  ForwardPass forward(c, weights, std::move(route), kv, 32, defer);
  BlockTable table;
  table.reserve(kv, static_cast<int64_t>(ids.size()));
  const auto vocab = static_cast<size_t>(c.vocab_size);
  std::vector<float> logits;
  for (size_t start = 0; start < ids.size(); start += static_cast<size_t>(chunk_tokens)) {
    const size_t n = std::min(ids.size() - start, static_cast<size_t>(chunk_tokens));
    std::vector<float> rows(n * vocab);
    const SequenceChunk chunk{std::span(ids).subspan(start, n), static_cast<int64_t>(start), &table, true};
    forward.run({&chunk, 1}, rows.data());
    logits.insert(logits.end(), rows.begin(), rows.end());
  }
  table.release(kv);
  return logits;
}

}  // namespace

TEST_CASE("forward: routed experts on a backend of their own (submitted) equal one backend, bit for bit",
          "[engine][placement][deferral][moe_submit]") {
  const std::vector<int32_t> ids = {4, 8, 15, 16, 23, 42, 7, 99, 311, 5};
  for (const std::string name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const ModelFiles files = open_model_files(test::data_dir() + "/" + name);
    const Weights weights = bind_weights(files);
    for (CpuKernels kernels : {CpuKernels::fast, CpuKernels::reference})
      for (int64_t defer : {int64_t{0}, int64_t{1}})
        for (int64_t chunk : {int64_t{10}, int64_t{1}}) {  // a prompt in one pass, then decode steps
          INFO(name << " " << cpu_kernels_name(kernels) << " defer " << defer << " chunk " << chunk);
          auto main = make_cpu_backend(2, kernels);
          auto experts = make_cpu_backend(3, kernels);
          const auto alone = run_pass(
              files, weights, [&](WeightGroup, int64_t) -> Backend& { return *main; }, ids, defer, chunk);
          // The hybrid shape: experts on one backend, everything else (shared experts, router) on the other.
          const auto split = run_pass(
              files, weights,
              [&](WeightGroup g, int64_t) -> Backend& {
                return g == WeightGroup::experts ? *experts : *main;
              },
              ids, defer, chunk);
          REQUIRE(split.size() == alone.size());
          CHECK(std::memcmp(split.data(), alone.data(), alone.size() * sizeof(float)) == 0);
        }
  }
}
