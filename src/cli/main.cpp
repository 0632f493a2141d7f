// The `tandem` executable: parses, dispatches to a registered subcommand, prints errors.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "cli/command.hpp"
#include "cli/llama_compat.hpp"
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
  // A flag given twice takes its last value, as llama.cpp does (repeatable ones opt into TakeAll).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::vector<std::pair<CLI::App*, CommandRun>> runs;
  for (auto& spec : command_registry()) {
    CLI::App* sub = app.add_subcommand(spec.name, spec.help);
    runs.emplace_back(sub, spec.setup(*sub));
  }
  try {
    const std::vector<std::string> args = rewrite_llama_spellings(argc, argv);
    std::vector<const char*> arg_pointers;
    for (const auto& arg : args) arg_pointers.push_back(arg.c_str());
    app.parse(static_cast<int>(arg_pointers.size()), arg_pointers.data());
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
