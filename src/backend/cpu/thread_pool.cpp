#include "tandem/backend/thread_pool.hpp"

#include <hwloc.h>
#include <pthread.h>

#include <algorithm>
#include <exception>

namespace tandem {
namespace {

// Set while a thread runs a chunk: a parallel_for issued from inside one runs inline instead of
// waiting for workers that are busy with the outer loop.
thread_local bool inside_pool_job = false;

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

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = physical_cores();
  threads = std::clamp(threads, 1, 1024);
  workers_.reserve(static_cast<size_t>(threads - 1));
  // Worker i runs on core i (mod cores); the caller keeps its own placement. Pinning failures
  // are harmless: the worker just runs unpinned.
  hwloc_topology_t topology;
  const bool have_topology = threads > 1 && load_core_topology(&topology);
  const int cores = have_topology ? hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE) : 0;
  for (int i = 1; i < threads; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
    if (cores > 0) {
      hwloc_obj_t core = hwloc_get_obj_by_type(topology, HWLOC_OBJ_CORE, static_cast<unsigned>(i % cores));
      if (core && core->cpuset)
        hwloc_set_thread_cpubind(topology, workers_.back().native_handle(), core->cpuset, 0);
    }
  }
  if (have_topology) hwloc_topology_destroy(topology);
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t, int)>* job;
    int64_t items;
    int chunks;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
      items = job_items_;
      chunks = job_chunks_;
    }
    std::exception_ptr failure;
    if (index < chunks) {
      const int64_t begin = items * index / chunks, end = items * (index + 1) / chunks;
      inside_pool_job = true;
      try {
        if (begin < end) (*job)(begin, end, index);
      } catch (...) {
        failure = std::current_exception();
      }
      inside_pool_job = false;
    }
    {
      std::lock_guard lock(mutex_);
      if (failure && !failure_) failure_ = failure;
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  const int chunks = static_cast<int>(std::min<int64_t>(n, size()));
  if (chunks == 1 || inside_pool_job) {
    fn(0, n, 0);
    return;
  }
  std::lock_guard run_lock(run_mutex_);
  {
    std::lock_guard lock(mutex_);
    job_ = &fn;
    job_items_ = n;
    job_chunks_ = chunks;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  std::exception_ptr failure;
  inside_pool_job = true;
  try {
    fn(0, n / chunks, 0);
  } catch (...) {
    failure = std::current_exception();
  }
  inside_pool_job = false;
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  if (!failure) failure = failure_;
  failure_ = nullptr;
  if (failure) std::rethrow_exception(failure);
}

}  // namespace tandem
