// ThreadPool: every index is visited exactly once whatever the chunking, nested loops run inline,
// exceptions reach the caller, bad thread counts are refused.
#include <atomic>
#include <catch2/catch.hpp>
#include <stdexcept>
#include <vector>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"

TEST_CASE("thread pool: every index once, worker ids in range", "[thread_pool]") {
  for (int threads : {1, 2, 3, 8}) {
    tandem::ThreadPool pool(threads);
    REQUIRE(pool.size() == threads);
    for (int64_t n : {1, 2, 5, 31, 1000}) {
      INFO("threads " << threads << ", n " << n);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<bool> bad_worker{false};
      for (int repeat = 0; repeat < 20; ++repeat)
        pool.parallel_for(n, [&](int64_t begin, int64_t end, int worker) {
          if (worker < 0 || worker >= threads) bad_worker = true;
          for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
      CHECK_FALSE(bad_worker.load());
      for (const auto& h : hits) CHECK(h.load() == 20);
    }
  }
}

TEST_CASE("thread pool: a parallel_for inside a chunk runs inline", "[thread_pool]") {
  tandem::ThreadPool pool(4);
  std::atomic<int64_t> total{0};
  pool.parallel_for(8, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i)
      pool.parallel_for(10, [&](int64_t b, int64_t e, int) { total.fetch_add(e - b); });
  });
  CHECK(total.load() == 80);
}

TEST_CASE("thread pool: the first exception reaches the caller and the pool stays usable", "[thread_pool]") {
  tandem::ThreadPool pool(3);
  CHECK_THROWS_WITH(pool.parallel_for(100,
                                      [](int64_t begin, int64_t end, int) {
                                        if (begin <= 57 && 57 < end) throw std::runtime_error("item 57");
                                      }),
                    "item 57");
  std::atomic<int64_t> count{0};
  pool.parallel_for(100, [&](int64_t begin, int64_t end, int) { count.fetch_add(end - begin); });
  CHECK(count.load() == 100);
}

TEST_CASE("thread pool: negative and absurd thread counts are refused", "[thread_pool]") {
  CHECK_THROWS_AS(tandem::ThreadPool(-5), tandem::Error);
  CHECK_THROWS_AS(tandem::ThreadPool(tandem::ThreadPool::max_threads + 1), tandem::Error);
  CHECK(tandem::ThreadPool(0).size() == tandem::ThreadPool::physical_cores());
}
