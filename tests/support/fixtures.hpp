#pragma once
// Where the tests find their reference data.
#include <optional>
#include <string>

namespace tandem::test {

// tests/data: small copies the core tests need; always present.
std::string data_dir();
// $TANDEM_FIXTURES, else ../shared/fixtures beside the checkout; nullopt when neither exists.
std::optional<std::string> fixtures_dir();
// The built `tandem` executable, for CLI contract tests.
std::string cli_path();

}  // namespace tandem::test

// In a test that needs ../shared/fixtures: binds `fx` to its path, or says why it skips.
#define TANDEM_REQUIRE_FIXTURES(fx)                                                         \
  const auto fx##_opt = ::tandem::test::fixtures_dir();                                     \
  if (!fx##_opt) {                                                                          \
    WARN("skipped: ../shared/fixtures not found (set TANDEM_FIXTURES to run this test)");   \
    return;                                                                                 \
  }                                                                                         \
  const std::string& fx = *fx##_opt
