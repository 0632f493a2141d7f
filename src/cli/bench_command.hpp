#pragma once
// `tandem bench KIND ...`: each benchmark lives in its own file (cmd_bench_<kind>.cpp) and
// registers itself here, as commands do in command.hpp; cmd_bench.cpp makes each one a
// subcommand of `bench`. Adding a benchmark needs no edit elsewhere.
#include <string>
#include <vector>

#include "cli/command.hpp"

namespace tandem::cli {

std::vector<CommandSpec>& bench_registry();

struct RegisterBench {
  explicit RegisterBench(CommandSpec spec) { bench_registry().push_back(std::move(spec)); }
};

}  // namespace tandem::cli
