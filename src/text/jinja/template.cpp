#include "text/jinja/template.hpp"

#include "text/jinja/interpreter.hpp"
#include "text/jinja/parser.hpp"

namespace tandem::jinja {

Template Template::parse(std::string_view source, const LexerOptions& options) {
  Template parsed;
  parsed.body_ = std::make_shared<const Body>(parse_template(tokenize_template(source, options)));
  return parsed;
}

std::string Template::render(const Dict& context, const RenderLimits& limits) const {
  return render_template(*body_, context, limits);
}

}  // namespace tandem::jinja
