#pragma once
// A fixed pool of worker threads (pinned to cores with hwloc when available) that runs one
// parallel_for at a time; the calling thread takes part. Owned by a backend, never global.
//
// Tasks (submit/join): a task is a piece of host code that calls parallel_for, started on the pool's
// last worker (its driver) while the submitting thread goes on with other work; that worker drives
// the task's loops with the other workers. The submitting thread's join() helps with those loops'
// chunks until the task is done, so the pool never has more busy threads than size().
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace tandem {

class ThreadPool {
 public:
  static constexpr int max_threads = 4096;
  // `threads` == 0: one per physical core; more than 1024 run as 1024. Throws Error(invalid_argument)
  // for a negative count or one above max_threads, and Error(out_of_memory) naming the thread when
  // the OS refuses to start one (the workers already started are stopped and joined first).
  // `spin_microseconds`: how long an idle worker, and a caller waiting for its workers, poll before
  // sleeping on a condition variable (0..kMaxSpinMicroseconds; Error(invalid_argument) outside).
  // A decode step issues hundreds of short loops, and a futex wake-up per loop and thread cost
  // more than the loops themselves on small models; a hybrid step leaves the workers idle for a
  // GPU's layer between two loops, longer than the default.
  static constexpr int kDefaultSpinMicroseconds = 30;
  static constexpr int kMaxSpinMicroseconds = 1000000;
  explicit ThreadPool(int threads, int spin_microseconds = kDefaultSpinMicroseconds);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end, worker) over [0, n) split into contiguous chunks (a few per thread, taken
  // by whichever thread is free, so one thread may run several); `worker` in [0, size()) names the
  // thread (for per-thread scratch). Blocks until all are done; rethrows the first exception.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

  static int physical_cores();

  // Starts task() on the driver worker and returns at once with its ticket (1, 2, ...); tasks run
  // one at a time in submission order. A pool of one thread runs it before returning. While a task
  // runs, a parallel_for from another thread goes on without the driver.
  uint64_t submit(std::function<void()> task);
  // Returns once task `ticket` and every earlier one finished, running chunks of their loops on the
  // calling thread (as worker 0) meanwhile; rethrows the first exception of a task up to `ticket`
  // not rethrown before. Not from inside a task.
  void join(uint64_t ticket);
  bool done(uint64_t ticket) const { return completed_.load(std::memory_order_acquire) >= ticket; }

  // Per-worker scratch for kernels run through parallel_for: buffer `slot` (< kScratchSlots) of
  // `worker`, grown to the largest size asked and kept for the pool's life, so kernels neither
  // allocate per call nor keep per-thread globals. Only the thread running as `worker` may use it.
  static constexpr int kScratchSlots = 2;
  float* scratch(int worker, int slot, size_t floats);

 private:
  static constexpr int kChunksPerThread = 4;
  int spin_microseconds_ = kDefaultSpinMicroseconds;
  enum class Work { stop, loop, task };
  struct Task {
    uint64_t ticket;
    std::function<void()> run;
  };
  void worker_loop(int index);
  Work wait_for_work(uint64_t& seen, bool driver, Task& task);
  void run_task(Task& task, uint64_t& seen);
  void finish_loop_part(std::exception_ptr failure);
  std::exception_ptr run_chunks(int worker) noexcept;
  // The worker index a parallel_for from this thread runs inline under (inside a chunk of a running
  // loop), else -1: it dispatches.
  int inline_worker_index() const;
  int driver_index() const { return driver_; }
  bool is_driver(std::thread::id id) const { return !workers_.empty() && workers_.back().get_id() == id; }
  void stop_workers() noexcept;

  std::vector<std::thread> workers_;
  int driver_ = 0;  // the worker index that runs tasks (the last one); 0: no workers, tasks run in submit
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_items_ = 0;
  int64_t job_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<std::thread::id> busy_caller_{};  // the thread running parallel_for, while it does
  int caller_worker_ = 0;                       // its worker index (0, or the driver's)
  // Published (release) after the job's fields; workers poll or sleep on it. Changed only by the
  // caller, under mutex_, so a worker checking it under mutex_ before sleeping misses no wake-up.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers still in the current loop; the last one wakes the caller
  std::atomic<bool> stopping_{false};
  std::exception_ptr failure_;  // the first exception a worker threw, rethrown by the caller
  std::mutex run_mutex_;        // one parallel_for at a time

  // Tasks. Under mutex_: tasks_, submitted_, the driver's decision between a loop and a task
  // (driving_), and the participant count of each loop published (the driver counts only when idle).
  std::deque<Task> tasks_;
  uint64_t submitted_ = 0;
  std::atomic<uint64_t> queued_{0};     // tasks submitted and not started
  std::atomic<uint64_t> completed_{0};  // the last ticket finished
  std::atomic<bool> driving_{false};    // the driver runs a task
  // The generation of the loop the driving task has open for a joining thread to help, else 0.
  std::atomic<uint64_t> driver_loop_{0};
  std::atomic<int> joining_{0};            // threads in join()
  std::atomic<std::thread::id> helper_{};  // a joining thread while it runs a chunk (worker 0)
  std::condition_variable driver_wake_, task_progress_;
  std::exception_ptr task_failure_;  // the first exception of a task not yet rethrown
  uint64_t task_failure_ticket_ = 0;
  std::atomic<bool> has_task_failure_{false};
  std::vector<std::vector<float>> scratch_;  // [worker][slot]
};

}  // namespace tandem
