#include <cuda_runtime.h>

#include <vector>

#include "text.cuh"

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/error.hpp"

namespace tandem::cuda {

namespace {
void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw Error(status == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
                text("CUDA: ", call, " failed: ", cudaGetErrorString(status)));
}
}  // namespace

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

DeviceInfo device_info(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  check(cudaSetDevice(device), "cudaSetDevice");
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  return DeviceInfo{prop.name, total_bytes, free_bytes, prop.multiProcessorCount, prop.major, prop.minor};
}

DeviceBuffer::DeviceBuffer(int device, size_t bytes) : bytes_(bytes), device_(device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  if (bytes) check(cudaMalloc(&data_, bytes), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_), device_(o.device_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (data_) cudaFree(data_);
    data_ = o.data_;
    bytes_ = o.bytes_;
    device_ = o.device_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset > bytes_ || bytes > bytes_ - offset)
    throw Error(ErrorKind::out_of_range, text("DeviceBuffer::upload of ", bytes, " bytes at ", offset, " into ", bytes_));
  check(cudaMemcpy(static_cast<char*>(data_) + offset, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(H2D)");
  // From pageable memory cudaMemcpy may return before the DMA lands; kernels on non-blocking
  // streams do not wait for it, so wait here.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset)
    throw Error(ErrorKind::out_of_range, text("DeviceBuffer::download of ", bytes, " bytes at ", offset, " from ", bytes_));
  check(cudaMemcpy(host, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(D2H)");
}

void* device_allocate(int device, size_t bytes) {
  check(cudaSetDevice(device), "cudaSetDevice");
  void* data = nullptr;
  const cudaError_t status = cudaMalloc(&data, bytes == 0 ? 1 : bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; clear it for later launch checks
    throw Error(status == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::internal,
                text("CUDA: cudaMalloc of ", bytes, " bytes on cuda:", device, " failed: ", cudaGetErrorString(status)));
  }
  return data;
}

void device_free(void* data) noexcept {
  if (data) cudaFree(data);
}

void* pinned_host_allocate(size_t bytes) {
  void* data = nullptr;
  const cudaError_t status = cudaHostAlloc(&data, bytes == 0 ? 1 : bytes, cudaHostAllocPortable);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorKind::out_of_memory,
                text("CUDA: cudaHostAlloc of ", bytes, " pinned bytes failed: ", cudaGetErrorString(status)));
  }
  return data;
}

void pinned_host_free(void* data) noexcept {
  if (data) cudaFreeHost(data);
}

Event::Event(int device) : device_(device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  event_ = e;
}

Event::~Event() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void Event::record(Stream& stream) {
  check(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream.native())),
        "cudaEventRecord");
}

void Event::wait_on(Stream& stream) {
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream.native()), static_cast<cudaEvent_t>(event_), 0),
        "cudaStreamWaitEvent");
}

void Event::synchronize() { check(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize"); }

Stream::Stream(int device) : device_(device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  stream_ = s;
}

Stream::~Stream() {
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void Stream::synchronize() {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize");
}

void Stream::make_current() { check(cudaSetDevice(device_), "cudaSetDevice"); }

void Stream::copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream_)),
        "cudaMemcpyAsync(H2D)");
}

void Stream::copy_many_to_device(void* const* dsts, const void* const* srcs, const size_t* sizes, size_t count) {
  if (count == 0) return;
  const auto stream = static_cast<cudaStream_t>(stream_);
  if (batch_copies_) {
    cudaMemcpyAttributes attributes{};
    attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attributes.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t attribute_index = 0;
    // The batch API takes non-const pointers to the arrays it only reads.
    const cudaError_t status = cudaMemcpyBatchAsync(const_cast<void**>(dsts), const_cast<const void**>(srcs),
                                                    const_cast<size_t*>(sizes), count, &attributes, &attribute_index,
                                                    1, stream);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotSupported && status != cudaErrorInvalidValue) check(status, "cudaMemcpyBatchAsync(H2D)");
    (void)cudaGetLastError();
    // A driver without batches: one by one from now on; a batch it declines (say, of pageable
    // sources): one by one this time.
    if (status == cudaErrorNotSupported) batch_copies_ = false;
  }
  for (size_t i = 0; i < count; ++i)
    if (sizes[i] != 0)
      check(cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync(H2D)");
}

void Stream::copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream_)),
        "cudaMemcpyAsync(D2H)");
  synchronize();
}

void Stream::copy_to_host_async(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream_)),
        "cudaMemcpyAsync(D2H)");
}

void Stream::copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream_)),
        "cudaMemcpyAsync(D2D)");
}

void Stream::zero(void* device_dst, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemsetAsync(device_dst, 0, bytes, static_cast<cudaStream_t>(stream_)), "cudaMemsetAsync");
}

Graph::~Graph() { reset(); }

Graph::Graph(Graph&& o) noexcept : graph_(o.graph_), exec_(o.exec_), shape_(o.shape_) {
  o.graph_ = o.exec_ = nullptr;
}

Graph& Graph::operator=(Graph&& o) noexcept {
  if (this != &o) {
    reset();
    graph_ = o.graph_;
    exec_ = o.exec_;
    shape_ = o.shape_;
    o.graph_ = o.exec_ = nullptr;
  }
  return *this;
}

void Graph::reset() noexcept {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  graph_ = exec_ = nullptr;
}

void Graph::begin_capture(Stream& stream) {
  check(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream.native()), cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture");
}

namespace {
bool is_kernel(cudaGraphNode_t node) {
  cudaGraphNodeType type{};
  return cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel;
}

// Counts the graph's nodes, kernels, edges and programmatic edges (for reports; a failing query
// leaves the counts it had).
GraphShape inspect_graph(cudaGraph_t graph) {
  GraphShape shape;
  size_t nodes = 0;
  if (cudaGraphGetNodes(graph, nullptr, &nodes) != cudaSuccess) return shape;
  std::vector<cudaGraphNode_t> node_list(nodes);
  if (nodes > 0 && cudaGraphGetNodes(graph, node_list.data(), &nodes) != cudaSuccess) return shape;
  shape.nodes = static_cast<int64_t>(nodes);
  for (cudaGraphNode_t node : node_list) shape.kernels += is_kernel(node) ? 1 : 0;
  size_t edges = 0;
  if (cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &edges) != cudaSuccess) return shape;
  std::vector<cudaGraphNode_t> from(edges), to(edges);
  std::vector<cudaGraphEdgeData> data(edges);
  if (edges > 0 && cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &edges) != cudaSuccess) return shape;
  shape.edges = static_cast<int64_t>(edges);
  for (size_t i = 0; i < edges; ++i) shape.programmatic_edges += data[i].type == cudaGraphDependencyTypeProgrammatic;
  return shape;
}
}  // namespace

Graph Graph::end_capture(Stream& stream) noexcept {
  Graph g;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(static_cast<cudaStream_t>(stream.native()), &graph);
  if (ended != cudaSuccess || graph == nullptr) {
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // the failed recording's error is answered by the empty graph
    return g;
  }
  g.graph_ = graph;
  try {
    g.shape_ = inspect_graph(graph);
  } catch (...) {  // the node lists' allocation: the shape stays empty
  }
  cudaGraphExec_t exec = nullptr;
  if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    g.reset();
    return g;
  }
  g.exec_ = exec;
  return g;
}

void Graph::launch(Stream& stream) {
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream.native())),
        "cudaGraphLaunch");
}

}  // namespace tandem::cuda
