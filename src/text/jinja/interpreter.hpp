#pragma once
// Renders a parsed template against a context of variables, with jinja2's scoping: `set` in a
// for-loop body stays in that iteration, macros see the template's top level and their
// arguments, namespaces are the way out of a loop.
#include <string>

#include "text/jinja/ast.hpp"

namespace tandem::jinja {

// Throws tandem::Error naming the line for runtime errors (undefined strictly used, type errors,
// unknown filters/tests/methods, raise_exception).
std::string render_template(const Body& body, const Dict& context);

}  // namespace tandem::jinja
