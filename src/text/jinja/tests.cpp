// jinja2's builtin tests: `x is defined`, `x is not none`, `x is divisibleby(3)`, ...
#include <fmt/core.h>

#include <functional>
#include <unordered_map>

#include "text/jinja/builtins.hpp"
#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

namespace {

using Test = std::function<bool(const Value&, const CallArgs&)>;

const Value& argument(const CallArgs& args, const char* test) {
  if (args.positional.size() != 1) throw EvalError(fmt::format("test '{}' takes one argument", test));
  return args.positional[0];
}

bool is_integer(const Value& v) { return v.is_int(); }

int64_t integer_of(const Value& v, const char* test) {
  if (v.is_int()) return v.as_int();
  if (v.is_bool()) return v.as_bool();
  throw EvalError(fmt::format("test '{}' needs an integer, got {}", test, v.type_name()));
}

bool same_object(const Value& a, const Value& b) {
  if (a.data.index() != b.data.index()) return false;
  if (a.is_list()) return &a.as_list() == &b.as_list();
  if (a.is_dict()) return &a.as_dict() == &b.as_dict();
  return values_equal(a, b);
}

const std::unordered_map<std::string_view, Test>& tests() {
  auto compare = [](const char* name, auto predicate) {
    return Test([name, predicate](const Value& v, const CallArgs& a) {
      const Value& other = argument(a, name);
      return predicate(v, other);
    });
  };
  auto eq = compare("eq", [](const Value& a, const Value& b) { return values_equal(a, b); });
  auto ne = compare("ne", [](const Value& a, const Value& b) { return !values_equal(a, b); });
  auto lt = compare("lt", [](const Value& a, const Value& b) { return compare_values(a, b) < 0; });
  auto le = compare("le", [](const Value& a, const Value& b) { return compare_values(a, b) <= 0; });
  auto gt = compare("gt", [](const Value& a, const Value& b) { return compare_values(a, b) > 0; });
  auto ge = compare("ge", [](const Value& a, const Value& b) { return compare_values(a, b) >= 0; });
  static const std::unordered_map<std::string_view, Test> table = {
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const CallArgs&) { return v.is_none(); }},
      {"boolean", [](const Value& v, const CallArgs&) { return v.is_bool(); }},
      {"true", [](const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }},
      {"false", [](const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }},
      {"integer", [](const Value& v, const CallArgs&) { return is_integer(v); }},
      {"float", [](const Value& v, const CallArgs&) { return v.is_float(); }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.is_dict(); }},
      {"sequence",
       [](const Value& v, const CallArgs&) { return v.is_string() || v.is_list() || v.is_dict(); }},
      // jinja2's Undefined defines __iter__, so it counts as iterable
      {"iterable",
       [](const Value& v, const CallArgs&) {
         return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
       }},
      {"callable", [](const Value& v, const CallArgs&) { return v.is_callable(); }},
      {"odd", [](const Value& v, const CallArgs&) { return integer_of(v, "odd") % 2 != 0; }},
      {"even", [](const Value& v, const CallArgs&) { return integer_of(v, "even") % 2 == 0; }},
      {"divisibleby",
       [](const Value& v, const CallArgs& a) {
         int64_t divisor = integer_of(argument(a, "divisibleby"), "divisibleby");
         if (divisor == 0) throw EvalError("divisibleby(0)");
         return integer_of(v, "divisibleby") % divisor == 0;
       }},
      {"lower", [](const Value& v,
                   const CallArgs&) { return v.is_string() && to_lower(v.as_string()) == v.as_string(); }},
      {"upper", [](const Value& v,
                   const CallArgs&) { return v.is_string() && to_upper(v.as_string()) == v.as_string(); }},
      {"in", [](const Value& v, const CallArgs& a) { return contains(argument(a, "in"), v); }},
      {"sameas", [](const Value& v, const CallArgs& a) { return same_object(v, argument(a, "sameas")); }},
      {"escaped", [](const Value&, const CallArgs&) { return false; }},
      {"eq", eq},
      {"equalto", eq},
      {"==", eq},
      {"ne", ne},
      {"!=", ne},
      {"lt", lt},
      {"lessthan", lt},
      {"<", lt},
      {"le", le},
      {"<=", le},
      {"gt", gt},
      {"greaterthan", gt},
      {">", gt},
      {"ge", ge},
      {">=", ge},
  };
  return table;
}

}  // namespace

bool is_known_test(std::string_view name) { return tests().count(name) != 0; }

bool apply_test(std::string_view name, const Value& value, const CallArgs& args) {
  auto found = tests().find(name);
  if (found == tests().end()) throw EvalError(fmt::format("unknown test '{}'", name));
  return found->second(value, args);
}

}  // namespace tandem::jinja
