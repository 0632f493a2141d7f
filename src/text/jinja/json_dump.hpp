#pragma once
// Python's json.dumps over template values, as transformers' `tojson` filter calls it
// (ensure_ascii=False by default; indent; sort_keys; separators).
#include <optional>
#include <string>

#include "text/jinja/value.hpp"

namespace tandem::jinja {

struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // None: one line; else the string repeated per level
  bool sort_keys = false;
  std::optional<std::pair<std::string, std::string>> separators;  // (item, key)
};

// Throws EvalError for values JSON cannot hold (Undefined, namespaces, functions).
std::string python_json_dumps(const Value& value, const JsonDumpOptions& options);

}  // namespace tandem::jinja
