#pragma once
// The expert cache's split of routed pairs (Backend::split_cached_experts): a GPU that holds some
// of a layer's routed experts computes their pairs while the CPU computes the rest, and each pair's
// expert is counted so the cache can hold the most routed ones. The host definition; the CUDA
// backend's kernel (cuda/src/glue.cu) is held to it by test_cuda.
#include <cstdint>

namespace tandem {

// For each of `pairs` routed pairs: held[p] = ids[p] where held_map[ids[p]] != 0, else -1;
// rest[p] = ids[p] where it is 0, else -1; with counts, counts[ids[p]] += 1. A negative id goes to
// neither and is not counted. held_map and counts have `experts` entries; ids must be below it.
void split_cached_experts(const int32_t* ids, int64_t pairs, const int32_t* held_map, int64_t experts, int32_t* held,
                          int32_t* rest, uint32_t* counts);

}  // namespace tandem
