// The `tandem` executable: parses, dispatches to a registered subcommand, prints errors.
#include <cstdio>
#include <exception>

#include <fmt/core.h>

#include "cli/command.hpp"
#include "tandem/error.hpp"

namespace tandem::cli {

std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> commands;
  return commands;
}

}  // namespace tandem::cli

int main(int argc, char** argv) {
  using namespace tandem::cli;
  CLI::App app{"tandem: run Mixture-of-Experts LLMs on a CPU and a GPU in tandem"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tandem 0.1.0");
  std::vector<std::pair<CLI::App*, CommandRun>> runs;
  for (auto& spec : command_registry()) {
    CLI::App* sub = app.add_subcommand(spec.name, spec.help);
    runs.emplace_back(sub, spec.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runs)
      if (sub->parsed()) return run();
  } catch (const tandem::Error& e) {
    fmt::print(stderr, "tandem: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "tandem: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
