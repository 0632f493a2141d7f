#include "tandem/backend/cpu/reference/expert_cache_split.hpp"

#include <fmt/format.h>

#include "tandem/error.hpp"

namespace tandem {

void split_cached_experts(const int32_t* ids, int64_t pairs, const int32_t* held_map, int64_t experts, int32_t* held,
                          int32_t* rest, uint32_t* counts) {
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t e = ids[p];
    if (e >= experts)
      throw Error(ErrorKind::internal, fmt::format("expert cache: expert id {} outside [0, {})", e, experts));
    const bool is_held = e >= 0 && held_map[e] != 0;
    held[p] = is_held ? e : -1;
    rest[p] = e >= 0 && !is_held ? e : -1;
    if (counts != nullptr && e >= 0) ++counts[e];
  }
}

}  // namespace tandem
