#include "support/cli.hpp"

#include <array>
#include <cstdio>
#include <memory>
#include <stdexcept>

#include "support/fixtures.hpp"

namespace tandem::test {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string run_cli(const std::string& args, int& status) {
  const std::string command = shell_quote(cli_path()) + " " + args + " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed for: " + command);
  std::string out;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out.append(buffer.data(), n);
  status = pclose(pipe);
  return out;
}

}  // namespace tandem::test
