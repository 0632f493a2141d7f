#pragma once
// The CUDA side of Tandem as host code sees it: device discovery, device buffers and streams, with no
// CUDA headers here (so the engine and tests compile without nvcc). Every call that can fail throws
// tandem::Error naming the CUDA call and its error string.
#include <cstddef>
#include <cstdint>
#include <string>

namespace tandem::cuda {

struct DeviceInfo {
  std::string name;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  int multiprocessors = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

// 0 when there is no driver or no GPU: callers fall back to the CPU, tests skip.
int device_count() noexcept;
DeviceInfo device_info(int device);

// An owning allocation in one GPU's memory (cudaMalloc; never managed memory).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// Raw allocations for owners that keep their own handles (the backend's DeviceBuffers): device
// memory (cudaMalloc) and pinned host memory (cudaHostAlloc). The allocations throw
// Error(out_of_memory) naming the bytes; the frees never throw.
void* device_allocate(int device, size_t bytes);
void device_free(void* data) noexcept;
void* pinned_host_allocate(size_t bytes);
void pinned_host_free(void* data) noexcept;

class Stream;

// A CUDA event (timing disabled): a point in a stream that the host or another stream waits for.
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(Stream& stream);
  void wait_on(Stream& stream);  // later work on `stream` waits for the recorded point
  void synchronize();

 private:
  void* event_ = nullptr;  // cudaEvent_t
  int device_ = 0;
};

// An ordered queue of GPU work. Kernels below are enqueued on one; synchronize() waits for them.
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void synchronize();
  // Makes this stream's GPU the calling thread's current device (CUDA's current device is per
  // thread; launches and copies go to it).
  void make_current();
  // Copies ordered with the kernels on this stream. From/to pageable host memory they return once
  // the host side is safe to reuse (H2D) or filled (D2H waits for the stream up to the copy).
  void copy_to_device(void* device_dst, const void* host_src, size_t bytes);
  void copy_to_host(void* host_dst, const void* device_src, size_t bytes);
  // D2H without waiting: the host bytes are filled once the stream passes the copy.
  void copy_to_host_async(void* host_dst, const void* device_src, size_t bytes);
  // `count` H2D copies (dsts[i] ← srcs[i], sizes[i] bytes) in one call where the driver takes a batch
  // (cudaMemcpyBatchAsync), else one cudaMemcpyAsync each; no order among them, all after the work
  // before them on this stream. Without waiting: pinned sources must stay put until the stream passes.
  void copy_many_to_device(void* const* dsts, const void* const* srcs, const size_t* sizes, size_t count);
  void copy_on_device(void* device_dst, const void* device_src, size_t bytes);
  void zero(void* device_dst, size_t bytes);
  void* native() const { return stream_; }  // cudaStream_t
  int device() const { return device_; }
  // Programmatic dependent launch (sm_90) for the kernels that allow it (launch.cuh's
  // launch_dependent): such a kernel may be scheduled while the one before it on this stream is
  // finishing, and waits for it inside (griddepcontrol.wait) before touching memory. Off by default.
  void set_dependent_launch(bool on) { dependent_launch_ = on; }
  bool dependent_launch() const { return dependent_launch_; }
  // With dependent launch a kernel lets the next one start once it has waited for its own
  // predecessors (always); with this on, the decode linears and the routed experts' down rows also ask
  // L2 for their first weight rows before they wait, so that those loads overlap the kernel before them
  // (launch.cuh's prefetch_l2). On by default; TANDEM_CUDA_PREFETCH=0 turns the prefetches off, for A/B runs.
  void set_prefetch_ahead(bool on) { prefetch_ahead_ = on; }
  bool prefetch_ahead() const { return dependent_launch_ && prefetch_ahead_; }
  // Fault injection for the tests of error handling: the n-th launch_dependent on this stream from
  // now (n ≥ 1) is made with an invalid block size, so that CUDA itself refuses it; 0 disarms.
  void inject_launch_fault(int64_t n) { launches_to_fault_ = n; }
  bool take_launch_fault() { return launches_to_fault_ > 0 && --launches_to_fault_ == 0; }

 private:
  void* stream_ = nullptr;
  int device_ = 0;
  bool dependent_launch_ = false;
  bool prefetch_ahead_ = true;
  int64_t launches_to_fault_ = 0;
  bool batch_copies_ = true;  // until cudaMemcpyBatchAsync says the driver has none
};

// Work recorded from a stream (a CUDA graph, instantiated) and launched again as one unit. Recording
// starts with begin_capture: the stream's work is then recorded, not run, until end_capture. A call
// that cannot be recorded (a copy from pageable host memory, a wait on the host) makes the CUDA call
// fail, which the wrappers throw; end_capture then returns an empty Graph.
// What a recording holds: its nodes, its kernels, its edges and how many of those are programmatic
// (the follower may start while its predecessor finishes, as a dependent launch does on a stream).
struct GraphShape {
  int64_t nodes = 0;
  int64_t kernels = 0;
  int64_t edges = 0;
  int64_t programmatic_edges = 0;
};

class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(Graph&& o) noexcept;
  Graph& operator=(Graph&& o) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  static void begin_capture(Stream& stream);
  static Graph end_capture(Stream& stream) noexcept;
  bool empty() const { return exec_ == nullptr; }
  const GraphShape& shape() const { return shape_; }
  void launch(Stream& stream);

 private:
  void reset() noexcept;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  GraphShape shape_;
};

}  // namespace tandem::cuda
