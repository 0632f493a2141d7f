#pragma once
// Renders a parsed template against a context of variables, with jinja2's scoping: `set` in a
// for-loop body stays in that iteration, macros see the template's top level and their
// arguments, namespaces are the way out of a loop.
#include <atomic>
#include <cstdint>
#include <string>

#include "text/jinja/ast.hpp"

namespace tandem::jinja {

// Throws tandem::Error naming the line for runtime errors (undefined strictly used, type errors,
// unknown filters/tests/methods, raise_exception).
// A hostile template cannot run forever: every statement, loop iteration and expression
// evaluation is a step, and past `max_steps` rendering throws Error(out_of_range) naming the
// budget. `cancel`, when set, is polled every few thousand steps (Error(cancelled)).
struct RenderLimits {
  uint64_t max_steps = 50'000'000;
  const std::atomic<bool>* cancel = nullptr;
};

std::string render_template(const Body& body, const Dict& context, const RenderLimits& limits = {});

}  // namespace tandem::jinja
