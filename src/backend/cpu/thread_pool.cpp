#include "tandem/backend/thread_pool.hpp"

#include <hwloc.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <pthread.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <system_error>

#include "tandem/error.hpp"

namespace tandem {
namespace {

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// A topology of cores only: caches, NUMA detail and I/O discovery cost memory (and plugins) that
// pinning does not need.
bool load_core_topology(hwloc_topology_t* topology) {
  if (hwloc_topology_init(topology) != 0) return false;
  hwloc_topology_set_all_types_filter(*topology, HWLOC_TYPE_FILTER_KEEP_NONE);
  hwloc_topology_set_type_filter(*topology, HWLOC_OBJ_CORE, HWLOC_TYPE_FILTER_KEEP_ALL);
  hwloc_topology_set_type_filter(*topology, HWLOC_OBJ_PU, HWLOC_TYPE_FILTER_KEEP_ALL);
  if (hwloc_topology_load(*topology) != 0) {
    hwloc_topology_destroy(*topology);
    return false;
  }
  return true;
}

}  // namespace

int ThreadPool::physical_cores() {
  int cores = 0;
  hwloc_topology_t topology;
  if (load_core_topology(&topology)) {
    cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
    hwloc_topology_destroy(topology);
  }
  if (cores <= 0) cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return cores;
}

ThreadPool::ThreadPool(int threads, int spin_microseconds) : spin_microseconds_(spin_microseconds) {
  if (spin_microseconds < 0 || spin_microseconds > kMaxSpinMicroseconds)
    throw Error(ErrorKind::invalid_argument, fmt::format("thread pool spin time {} µs is outside 0..{}", spin_microseconds,
                                                         kMaxSpinMicroseconds));
  if (threads < 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("thread count {} is negative (0 means one per physical core)", threads));
  if (threads > max_threads)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("thread count {} is more than the {} a pool may have", threads, max_threads));
  if (threads == 0) threads = physical_cores();
  threads = std::clamp(threads, 1, 1024);
  scratch_.resize(static_cast<size_t>(threads) * kScratchSlots);
  workers_.reserve(static_cast<size_t>(threads - 1));
  driver_ = threads - 1;
  // Worker i runs on core i (mod cores); the caller keeps its own placement. Pinning failures
  // are harmless: the worker just runs unpinned.
  hwloc_topology_t topology;
  const bool have_topology = threads > 1 && load_core_topology(&topology);
  const int cores = have_topology ? hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE) : 0;
  for (int i = 1; i < threads; ++i) {
    try {
      workers_.emplace_back([this, i] { worker_loop(i); });
    } catch (const std::exception& e) {
      // e.g. a process or memory limit: stop and join the workers already running (a vector of
      // joinable threads must not be destroyed), then say how far we got
      if (have_topology) hwloc_topology_destroy(topology);
      stop_workers();
      throw Error(ErrorKind::out_of_memory,
                  fmt::format("cannot start worker thread {} of {}: {} (ask for fewer threads)", i + 1, threads,
                              e.what()));
    }
    if (cores > 0) {
      hwloc_obj_t core = hwloc_get_obj_by_type(topology, HWLOC_OBJ_CORE, static_cast<unsigned>(i % cores));
      if (core && core->cpuset)
        hwloc_set_thread_cpubind(topology, workers_.back().native_handle(), core->cpuset, 0);
    }
  }
  if (have_topology) hwloc_topology_destroy(topology);
}

void ThreadPool::stop_workers() noexcept {
  {
    std::lock_guard lock(mutex_);
    stopping_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  driver_wake_.notify_all();
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

ThreadPool::~ThreadPool() {
  uint64_t last = 0;
  {
    std::lock_guard lock(mutex_);
    last = submitted_;
  }
  try {
    join(last);    // a task's loops need the workers
  } catch (...) {  // its owner did not wait for it: nobody is left to tell
  }
  stop_workers();
}

namespace {
// Polls `ready` for about `micros` microseconds; true as soon as it holds.
template <class Ready>
bool spin_until(Ready&& ready, int micros) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 0;; ++i) {
    if (ready()) return true;
    for (int p = 0; p < 8; ++p) spin_pause();
    if ((i & 15) == 15 && std::chrono::steady_clock::now() >= deadline) return ready();
  }
}
}  // namespace

ThreadPool::Work ThreadPool::wait_for_work(uint64_t& seen, bool driver, Task& task) {
  const auto ready = [&] {
    return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen ||
           (driver && queued_.load(std::memory_order_acquire) > 0);
  };
  for (;;) {
    if (!spin_until(ready, spin_microseconds_)) {
      std::unique_lock lock(mutex_);
      (driver ? driver_wake_ : wake_).wait(lock, ready);
    }
    if (stopping_.load(std::memory_order_acquire)) return Work::stop;
    if (!driver) {
      seen = generation_.load(std::memory_order_acquire);
      return Work::loop;
    }
    // The driver decides under mutex_, where a loop's publisher counts it as a participant or not.
    std::lock_guard lock(mutex_);
    if (generation_.load(std::memory_order_relaxed) != seen) {
      seen = generation_.load(std::memory_order_relaxed);
      return Work::loop;
    }
    if (!tasks_.empty()) {
      task = std::move(tasks_.front());
      tasks_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
      driving_.store(true, std::memory_order_relaxed);
      return Work::task;
    }
  }
}

void ThreadPool::finish_loop_part(std::exception_ptr failure) {
  if (failure) {
    std::lock_guard lock(mutex_);
    if (!failure_) failure_ = failure;
  }
  if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    // The caller checks pending_ under mutex_ before it sleeps: taking the mutex here means it
    // is either asleep (and woken) or has not checked yet (and sees 0).
    std::lock_guard lock(mutex_);
    done_.notify_one();
  }
}

void ThreadPool::run_task(Task& task, uint64_t& seen) {
  std::exception_ptr failure;
  try {
    task.run();
  } catch (...) {
    failure = std::current_exception();
  }
  task.run = nullptr;
  {
    std::lock_guard lock(mutex_);
    // Loops published while this task ran either were its own (finished) or did not count the
    // driver: it skips them all.
    seen = generation_.load(std::memory_order_relaxed);
    driving_.store(false, std::memory_order_relaxed);
    if (failure && !task_failure_) {
      task_failure_ = failure;
      task_failure_ticket_ = task.ticket;
      has_task_failure_.store(true, std::memory_order_release);
    }
    completed_.store(task.ticket, std::memory_order_release);
  }
  task_progress_.notify_all();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  const bool driver = index == driver_index();
  Task task;
  for (;;) {
    const Work work = wait_for_work(seen, driver, task);
    if (work == Work::stop) return;
    if (work == Work::task)
      run_task(task, seen);
    else
      finish_loop_part(run_chunks(index));
  }
}

uint64_t ThreadPool::submit(std::function<void()> task) {
  if (workers_.empty()) {  // no driver: the task runs now, its failure waits for join like any other
    uint64_t ticket = 0;
    {
      std::lock_guard lock(mutex_);
      ticket = ++submitted_;
    }
    Task t{ticket, std::move(task)};
    uint64_t seen = 0;
    run_task(t, seen);
    return ticket;
  }
  uint64_t ticket = 0;
  {
    std::lock_guard lock(mutex_);
    ticket = ++submitted_;
    tasks_.push_back(Task{ticket, std::move(task)});
    queued_.fetch_add(1, std::memory_order_release);
  }
  driver_wake_.notify_one();
  return ticket;
}

void ThreadPool::join(uint64_t ticket) {
  if (!done(ticket)) {
    if (is_driver(std::this_thread::get_id()))
      throw Error(ErrorKind::internal, "ThreadPool::join called from inside a task");
    joining_.fetch_add(1, std::memory_order_acq_rel);
    struct Leave {
      std::atomic<int>& joining;
      ~Leave() { joining.fetch_sub(1, std::memory_order_acq_rel); }
    } leave{joining_};
    uint64_t helped = 0;  // the generation of the last loop this thread helped with
    const auto ready = [&] {
      const uint64_t open = driver_loop_.load(std::memory_order_acquire);
      return done(ticket) || (open != 0 && open != helped);
    };
    for (;;) {
      if (!spin_until(ready, spin_microseconds_)) {
        std::unique_lock lock(mutex_);
        task_progress_.wait(lock, ready);
      }
      if (done(ticket)) break;
      bool enter = false;
      {
        // Entering under mutex_, where the driver closes its loop: either this thread is counted
        // before it closes, or it sees the loop closed.
        std::lock_guard lock(mutex_);
        const uint64_t open = driver_loop_.load(std::memory_order_relaxed);
        if (open != 0 && open != helped) {
          helped = open;
          pending_.fetch_add(1, std::memory_order_relaxed);
          enter = true;
        }
      }
      if (!enter) continue;
      helper_.store(std::this_thread::get_id(), std::memory_order_relaxed);
      std::exception_ptr failure = run_chunks(0);
      helper_.store(std::thread::id(), std::memory_order_relaxed);
      finish_loop_part(failure);
    }
  }
  if (!has_task_failure_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(mutex_);
  if (!task_failure_ || task_failure_ticket_ > ticket) return;
  std::exception_ptr failure = std::exchange(task_failure_, nullptr);
  has_task_failure_.store(false, std::memory_order_release);
  std::rethrow_exception(failure);
}

// Threads claim chunks from a shared counter until none are left, so a thread the OS preempts
// (a loaded machine, more threads than free cores) delays only the chunk it holds, not a fixed
// 1/threads share of the loop.
std::exception_ptr ThreadPool::run_chunks(int worker) noexcept {
  const auto& fn = *job_;
  const int64_t items = job_items_;
  const int64_t chunks = job_chunks_;
  try {
    for (int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next_chunk_.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t begin = items * c / chunks, end = items * (c + 1) / chunks;
      if (begin < end) fn(begin, end, worker);
    }
  } catch (...) {
    next_chunk_.store(chunks, std::memory_order_relaxed);  // the others stop early too
    return std::current_exception();
  }
  return nullptr;
}

int ThreadPool::inline_worker_index() const {
  const auto self = std::this_thread::get_id();
  if (busy_caller_.load(std::memory_order_relaxed) == self) return caller_worker_;
  if (helper_.load(std::memory_order_relaxed) == self) return 0;
  for (size_t i = 0; i < workers_.size(); ++i)
    if (workers_[i].get_id() == self) {
      // The driver between its task's loops dispatches them; inside a chunk it runs inline.
      if (static_cast<int>(i) + 1 == driver_index() && driving_.load(std::memory_order_relaxed)) return -1;
      return static_cast<int>(i) + 1;
    }
  return -1;
}

float* ThreadPool::scratch(int worker, int slot, size_t floats) {
  std::vector<float>& buffer = scratch_[static_cast<size_t>(worker) * kScratchSlots + static_cast<size_t>(slot)];
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  // Issued from inside a chunk of this pool: run inline (the workers it would wait for are busy
  // with the outer loop), under the calling thread's own worker index so its scratch stays its own.
  if (const int self = inline_worker_index(); self >= 0) {
    fn(0, n, self);
    return;
  }
  const bool by_driver = is_driver(std::this_thread::get_id());
  const int caller = by_driver ? driver_index() : 0;
  std::lock_guard run_lock(run_mutex_);
  busy_caller_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  caller_worker_ = caller;
  struct ClearCaller {
    std::atomic<std::thread::id>& caller;
    ~ClearCaller() { caller.store(std::thread::id(), std::memory_order_relaxed); }
  } clear_caller{busy_caller_};
  if (size() == 1 || n == 1) {
    fn(0, n, caller);
    return;
  }
  job_ = &fn;
  job_items_ = n;
  job_chunks_ = std::min<int64_t>(n, int64_t{kChunksPerThread} * size());
  next_chunk_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard lock(mutex_);
    // Every worker takes part but a driver busy with a task (which is this thread when by_driver).
    const bool driver_busy = driving_.load(std::memory_order_relaxed);
    pending_.store(static_cast<int>(workers_.size()) - (driver_busy ? 1 : 0), std::memory_order_relaxed);
    const uint64_t generation = generation_.fetch_add(1, std::memory_order_release) + 1;  // publishes the job
    if (by_driver) driver_loop_.store(generation, std::memory_order_release);
  }
  wake_.notify_all();
  if (!by_driver) driver_wake_.notify_one();
  if (by_driver && joining_.load(std::memory_order_acquire) > 0) task_progress_.notify_all();
  std::exception_ptr failure = run_chunks(caller);
  const auto all_done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  spin_until(all_done, spin_microseconds_);
  std::unique_lock lock(mutex_);
  done_.wait(lock, all_done);
  if (by_driver) driver_loop_.store(0, std::memory_order_release);
  if (!failure) failure = failure_;
  failure_ = nullptr;
  if (failure) std::rethrow_exception(failure);
}

}  // namespace tandem
