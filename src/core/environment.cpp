#include "core/environment.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>

#include "tandem/error.hpp"

namespace tandem {

std::optional<int64_t> integer_from_environment(const char* name, int64_t min, int64_t max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (*end != '\0' || errno == ERANGE || value < min || value > max)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}='{}' is not a whole number from {} to {}", name, text, min, max));
  return value;
}

}  // namespace tandem
