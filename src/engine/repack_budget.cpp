#include "tandem/engine/repack_budget.hpp"

#include <fmt/format.h>

namespace tandem {

bool repack_fits(double bytes, double memory_bytes, bool forced) {
  return forced || memory_bytes <= 0 || bytes <= kRepackMemoryShare * memory_bytes;
}

RepackBudget repack_budget(double with_int8_bytes, double strips_bytes, double memory_bytes, bool forced) {
  constexpr double kGiB = 1 << 30;
  if (repack_fits(with_int8_bytes, memory_bytes, forced)) return {};
  if (strips_bytes < with_int8_bytes && repack_fits(strips_bytes, memory_bytes, forced))
    return {RepackChoice::strips_only,
            fmt::format("CPU weights repacked without int8 copies for AMX prefill: with them the copies would take "
                        "{:.1f} GiB, more than {:.0f} % of this machine's {:.1f} GiB (without, {:.1f} GiB; "
                        "TANDEM_CPU_REPACK=1 forces them)",
                        with_int8_bytes / kGiB, kRepackMemoryShare * 100, memory_bytes / kGiB, strips_bytes / kGiB)};
  return {RepackChoice::none,
          fmt::format("CPU weights not repacked into strips: the copies would take {:.1f} GiB, more than {:.0f} % of "
                      "this machine's {:.1f} GiB (TANDEM_CPU_REPACK=1 forces them)",
                      strips_bytes / kGiB, kRepackMemoryShare * 100, memory_bytes / kGiB)};
}

}  // namespace tandem
