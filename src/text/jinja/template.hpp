#pragma once
// A parsed Jinja template, ready to render many times (the parse is shared and immutable).
#include <memory>
#include <string>
#include <string_view>

#include "text/jinja/ast.hpp"
#include "text/jinja/interpreter.hpp"
#include "text/jinja/lexer.hpp"

namespace tandem::jinja {

class Template {
 public:
  // jinja2.Environment defaults unless `options` says otherwise; transformers uses
  // trim_blocks and lstrip_blocks.
  static Template parse(std::string_view source, const LexerOptions& options = {});
  std::string render(const Dict& context, const RenderLimits& limits = {}) const;

 private:
  std::shared_ptr<const Body> body_;
};

}  // namespace tandem::jinja
