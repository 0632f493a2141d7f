#pragma once
// Running the built `tandem` executable from tests, for the CLI contracts.
#include <string>

namespace tandem::test {

std::string shell_quote(const std::string& s);
// Runs `tandem ARGS` through the shell (ARGS already quoted), stderr discarded; returns stdout and
// sets `status` to the raw wait status.
std::string run_cli(const std::string& args, int& status);

}  // namespace tandem::test
