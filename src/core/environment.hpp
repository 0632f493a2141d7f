#pragma once
// Integer tuning knobs read from the environment (TANDEM_CPU_PREFETCH, TANDEM_CPU_SPIN_US,
// TANDEM_STREAM_EXPERTS_MIN_TOKENS, ...), each refused with the same clear error when malformed.
#include <cstdint>
#include <optional>

namespace tandem {

// The value of variable `name` as a whole number in [min, max]; nullopt when it is unset or empty.
// Error(invalid_argument) naming the variable, its text and the range otherwise ("4k", "-1", junk).
std::optional<int64_t> integer_from_environment(const char* name, int64_t min, int64_t max);

}  // namespace tandem
