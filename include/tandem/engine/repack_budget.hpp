#pragma once
// The memory guard of the CPU's repacked weights (Engine::load, LoadOptions::cpu_repack): the 16-row
// strips, and the int8 copies AMX prefill reads, are copies beside the file's mapping, so they may take
// at most kRepackMemoryShare of the machine's memory. Over it the int8 copies go first (the strips
// serve decode and prefill alike), then the strips; forcing them (TANDEM_CPU_REPACK=1) keeps both.
#include <string>

namespace tandem {

inline constexpr double kRepackMemoryShare = 0.45;

enum class RepackChoice { strips_and_int8, strips_only, none };

struct RepackBudget {
  RepackChoice choice = RepackChoice::strips_and_int8;
  std::string warning;  // what was left out and why; empty where nothing was
};

// Whether copies of `bytes` fit the share of memory_bytes (0 or less: unknown, they fit), or are forced.
bool repack_fits(double bytes, double memory_bytes, bool forced);

// with_int8_bytes: the copies as asked (strips and, where the CPU makes them, int8 copies);
// strips_bytes: the strips alone; memory_bytes: the machine's (0 or less: unknown, nothing refused).
RepackBudget repack_budget(double with_int8_bytes, double strips_bytes, double memory_bytes, bool forced);

}  // namespace tandem
