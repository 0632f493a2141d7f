#pragma once
// A fixed pool of worker threads (pinned to cores with hwloc when available) that runs one
// parallel_for at a time; the calling thread takes part. Owned by a backend, never global.
#include <atomic>
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
  static constexpr int max_threads = 4096;
  // `threads` == 0: one per physical core; more than 1024 run as 1024. Throws Error(invalid_argument)
  // for a negative count or one above max_threads, and Error(out_of_memory) naming the thread when
  // the OS refuses to start one (the workers already started are stopped and joined first).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end, worker) over [0, n) split into contiguous chunks (a few per thread, taken
  // by whichever thread is free, so one thread may run several); `worker` in [0, size()) names the
  // thread (for per-thread scratch). Blocks until all are done; rethrows the first exception.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

  static int physical_cores();

  // Per-worker scratch for kernels run through parallel_for: buffer `slot` (< kScratchSlots) of
  // `worker`, grown to the largest size asked and kept for the pool's life, so kernels neither
  // allocate per call nor keep per-thread globals. Only the thread running as `worker` may use it.
  static constexpr int kScratchSlots = 2;
  float* scratch(int worker, int slot, size_t floats);

 private:
  static constexpr int kChunksPerThread = 4;
  // A worker that finished a loop, and a caller waiting for its workers, poll this long before
  // sleeping on a condition variable: a decode step issues hundreds of short loops, and a futex
  // wake-up per loop and thread cost more than the loops themselves on small models.
  static constexpr int kSpinMicroseconds = 30;
  void worker_loop(int index);
  bool wait_for_job(uint64_t& seen);  // false: stopping
  std::exception_ptr run_chunks(int worker) noexcept;
  int busy_worker_index() const;  // this thread's worker index inside a running loop, else -1
  void stop_workers() noexcept;

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_items_ = 0;
  int64_t job_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<std::thread::id> busy_caller_{};  // the thread running parallel_for, while it does
  // Published (release) after the job's fields; workers poll or sleep on it. Changed only by the
  // caller, under mutex_, so a worker checking it under mutex_ before sleeping misses no wake-up.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers still in the current loop; the last one wakes the caller
  std::atomic<bool> stopping_{false};
  std::exception_ptr failure_;  // the first exception a worker threw, rethrown by the caller
  std::mutex run_mutex_;        // one parallel_for at a time
  std::vector<std::vector<float>> scratch_;  // [worker][slot]
};

}  // namespace tandem
