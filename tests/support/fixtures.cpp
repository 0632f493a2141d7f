#include "support/fixtures.hpp"

#include <cstdlib>
#include <filesystem>

namespace tandem::test {

std::string data_dir() { return TANDEM_TEST_DATA_DIR; }

std::optional<std::string> fixtures_dir() {
  if (const char* env = std::getenv("TANDEM_FIXTURES"); env && *env) {
    if (std::filesystem::is_directory(env)) return std::string(env);
    return std::nullopt;
  }
  if (std::filesystem::is_directory(TANDEM_DEFAULT_FIXTURES_DIR)) return std::string(TANDEM_DEFAULT_FIXTURES_DIR);
  return std::nullopt;
}

std::string cli_path() { return TANDEM_CLI_PATH; }

}  // namespace tandem::test
