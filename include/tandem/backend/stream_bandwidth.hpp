#pragma once
// This machine's stream read bandwidth, measured the way a memory-bound decode step reads its
// weights: every thread of a backend reading its share of a buffer far larger than the caches.
// The roofline that benchmarks (bench experts, bench model) divide by.
#include <cstdint>

namespace tandem {

class Backend;

struct StreamReadOptions {
  uint64_t buffer_bytes = uint64_t{1} << 30;  // 1 GiB: far past any L3
  int passes = 5;                             // the best pass counts
};

// Best-of-passes read bandwidth in GB/s (1e9 bytes per second) over backend.parallel_for.
// Error(invalid_argument) for a buffer under 1 MiB or passes outside 1..100; Error(out_of_memory)
// when the buffer cannot be allocated.
double measure_stream_read_gbps(Backend& backend, const StreamReadOptions& options = {});

}  // namespace tandem
