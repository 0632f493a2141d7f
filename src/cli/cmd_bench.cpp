// `tandem bench KIND`: one subcommand per registered benchmark (bench_command.hpp).
#include <memory>
#include <utility>

#include "cli/bench_command.hpp"

namespace tandem::cli {

std::vector<CommandSpec>& bench_registry() {
  static std::vector<CommandSpec> benches;
  return benches;
}

namespace {

CommandRun setup(CLI::App& sub) {
  sub.require_subcommand(1);
  auto runs = std::make_shared<std::vector<std::pair<CLI::App*, CommandRun>>>();
  for (auto& spec : bench_registry()) {
    CLI::App* bench = sub.add_subcommand(spec.name, spec.help);
    runs->emplace_back(bench, spec.setup(*bench));
  }
  return [runs]() {
    for (auto& [bench, run] : *runs)
      if (bench->parsed()) return run();
    return 1;
  };
}

const RegisterCommand registered{{"bench", "measure this machine: tandem bench KIND --help", setup}};

}  // namespace
}  // namespace tandem::cli
