#include "tandem/backend/stream_bandwidth.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>

#include "backend/cpu/kernels/dot_kernels.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/error.hpp"

namespace tandem {
namespace {

constexpr uint64_t kChunkBytes = uint64_t{1} << 20;  // claimed by one thread at a time

struct AlignedFree {
  void operator()(uint64_t* p) const { ::operator delete(p, std::align_val_t{64}); }
};

// How far ahead the probe asks for lines: as far as the CPU kernels do by default;
// without it one Xeon core read 7.9 GB/s of the 16 it can, and a kernel that prefetches "beat" the
// roofline it was divided by.
constexpr uint64_t kPrefetchWords = kernels::kDefaultPrefetchBytes / sizeof(uint64_t);

// Sums a chunk with eight independent accumulators (one cache line per iteration), so the loop is
// bound by the loads, not by a dependency chain.
uint64_t read_chunk(const uint64_t* p, uint64_t words) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  for (uint64_t i = 0; i + 8 <= words; i += 8) {
    if (i + kPrefetchWords < words) __builtin_prefetch(p + i + kPrefetchWords, 0, 2);
    a0 += p[i];
    a1 ^= p[i + 1];
    a2 += p[i + 2];
    a3 ^= p[i + 3];
    a4 += p[i + 4];
    a5 ^= p[i + 5];
    a6 += p[i + 6];
    a7 ^= p[i + 7];
  }
  return a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;
}

}  // namespace

double measure_stream_read_gbps(Backend& backend, const StreamReadOptions& options) {
  if (options.buffer_bytes < kChunkBytes)
    throw Error(ErrorKind::invalid_argument, "stream read probe: buffer under 1 MiB");
  if (options.passes < 1 || options.passes > 100)
    throw Error(ErrorKind::invalid_argument, "stream read probe: passes outside 1..100");
  const uint64_t chunks = options.buffer_bytes / kChunkBytes;
  const uint64_t bytes = chunks * kChunkBytes;
  std::unique_ptr<uint64_t, AlignedFree> buffer;
  try {
    buffer.reset(static_cast<uint64_t*>(::operator new(bytes, std::align_val_t{64})));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory, "stream read probe: cannot allocate " + std::to_string(bytes) + " bytes");
  }
  uint64_t* data = buffer.get();
  constexpr uint64_t words_per_chunk = kChunkBytes / sizeof(uint64_t);
  // Written by the threads that read it (first touch places pages near them), with non-zero data
  // so no page is the shared zero page.
  backend.parallel_for(static_cast<int64_t>(chunks), [&](int64_t begin, int64_t end, int) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t* p = data + static_cast<uint64_t>(c) * words_per_chunk;
      for (uint64_t i = 0; i < words_per_chunk; ++i) p[i] = (static_cast<uint64_t>(c) << 20) + i + 1;
    }
  });
  std::atomic<uint64_t> sink{0};
  double best_seconds = 1e30;
  for (int pass = 0; pass < options.passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    backend.parallel_for(static_cast<int64_t>(chunks), [&](int64_t begin, int64_t end, int) {
      uint64_t sum = 0;
      for (int64_t c = begin; c < end; ++c) sum += read_chunk(data + static_cast<uint64_t>(c) * words_per_chunk, words_per_chunk);
      sink.fetch_add(sum, std::memory_order_relaxed);
    });
    best_seconds = std::min(best_seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return static_cast<double>(bytes) / best_seconds / 1e9;
}

}  // namespace tandem
