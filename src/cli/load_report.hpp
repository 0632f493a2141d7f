#pragma once
// What a command says on stderr once the model is loaded: the load's warnings (a missing tokenizer or
// template is the command's own error, where it needs one), and where the placement put things
// when a GPU takes part (all on the CPU, nothing moved: nothing to say).
#include <fmt/core.h>

#include <cstdio>

#include "tandem/engine/engine.hpp"

namespace tandem::cli {

inline void print_load_report(const Engine& engine) {
  for (const auto& warning : engine.warnings())
    if (!warning.starts_with("no tokenizer: ") && !warning.starts_with("no chat template: "))
      fmt::print(stderr, "tandem: warning: {}\n", warning);
  const MemoryReport report = engine.memory_report();
  if (report.uses_gpu()) fmt::print(stderr, "tandem: placement: {}\n", report.placement_text());
}

}  // namespace tandem::cli
