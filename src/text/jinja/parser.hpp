#pragma once
// Recursive-descent parser for the Jinja subset chat templates use, with jinja2's operator
// precedence. Unknown tags and malformed expressions are errors naming the construct and line.
#include <vector>

#include "text/jinja/ast.hpp"
#include "text/jinja/lexer.hpp"

namespace tandem::jinja {

// Throws tandem::Error(corrupt_file) for syntax errors, (unsupported) for tags it does not know.
Body parse_template(std::vector<Token> tokens);

}  // namespace tandem::jinja
