#pragma once
// Running the built `tandem` executable from tests, for the CLI contracts.
#include <string>

namespace tandem::test {

std::string shell_quote(const std::string& s);
// Runs `tandem ARGS` through the shell (ARGS already quoted), stderr discarded; returns stdout and
// sets `status` to the raw wait status.
std::string run_cli(const std::string& args, int& status);

struct CliResult {
  int exit_code = -1;  // -1 when it did not exit normally (a signal)
  std::string out, err;
};
// Runs `tandem ARGS` through the shell (ARGS already quoted) with stdout and stderr captured.
CliResult run_cli_captured(const std::string& args);

}  // namespace tandem::test
