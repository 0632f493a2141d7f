#pragma once
// Each `tandem` subcommand lives in its own file and registers itself here; main() knows none of
// them by name. A command's setup adds its options to the subcommand and returns the function
// that runs it (exit code: 0 ok, 1 error; usage errors are CLI11's).
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace tandem::cli {

using CommandRun = std::function<int()>;
using CommandSetup = std::function<CommandRun(CLI::App& sub)>;

struct CommandSpec {
  std::string name;
  std::string help;
  CommandSetup setup;
};

std::vector<CommandSpec>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(CommandSpec spec) { command_registry().push_back(std::move(spec)); }
};

}  // namespace tandem::cli
