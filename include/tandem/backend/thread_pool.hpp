#pragma once
// A fixed pool of worker threads (pinned to cores with hwloc when available) that runs one
// parallel_for at a time; the calling thread takes part. Owned by a backend, never global.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tandem {

class ThreadPool {
 public:
  // `threads` <= 0: one per physical core.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end, worker) over [0, n) split into contiguous chunks, one per thread at most;
  // `worker` in [0, size()) names the thread (for per-thread scratch). Blocks until all are done.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

  static int physical_cores();

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_items_ = 0;
  int job_chunks_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
  std::exception_ptr failure_;  // the first exception a worker threw, rethrown by the caller
  std::mutex run_mutex_;        // one parallel_for at a time
};

}  // namespace tandem
