#pragma once
// The values a Jinja template computes with, modelled on the Python objects jinja2 sees when
// transformers renders a chat template: None, bool, int, float, str, list, dict, namespace,
// callables, and jinja2's default Undefined. Lists and dicts are shared (Python references);
// templates cannot mutate them (transformers renders in an immutable sandbox), only namespaces.
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace tandem::jinja {

// A failure while evaluating (a type error, a missing method); the interpreter adds the line
// and turns it into tandem::Error.
struct EvalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Value;
struct Dict;
struct Namespace;
struct Callable;
// A Python list, or a tuple (tuple literals, dict items): the same except in repr and ==.
struct List : std::vector<Value> {
  using std::vector<Value>::vector;
  bool is_tuple = false;
};
List make_tuple(std::vector<Value> items);

// jinja2.Undefined: renders empty, is falsy, iterates as empty; remembers what was missing so a
// strict use (attribute access, arithmetic) can say so.
struct Undefined {
  std::string name;
};
struct None {};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<const List>,
               std::shared_ptr<const Dict>, std::shared_ptr<Namespace>, std::shared_ptr<const Callable>>
      data;

  Value() : data(Undefined{}) {}
  Value(None) : data(None{}) {}
  Value(bool b) : data(b) {}
  Value(int64_t i) : data(i) {}
  Value(int i) : data(int64_t{i}) {}
  Value(double f) : data(f) {}
  Value(std::string s) : data(std::move(s)) {}
  Value(const char* s) : data(std::string(s)) {}
  Value(List list) : data(std::make_shared<const List>(std::move(list))) {}
  Value(Dict dict);
  Value(std::shared_ptr<Namespace> ns) : data(std::move(ns)) {}
  Value(Callable callable);
  static Value undefined(std::string name) {
    Value v;
    v.data = Undefined{std::move(name)};
    return v;
  }

  bool is_undefined() const { return std::holds_alternative<Undefined>(data); }
  bool is_none() const { return std::holds_alternative<None>(data); }
  bool is_bool() const { return std::holds_alternative<bool>(data); }
  bool is_int() const { return std::holds_alternative<int64_t>(data); }  // not bool
  bool is_float() const { return std::holds_alternative<double>(data); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<std::string>(data); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<const List>>(data); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<const Dict>>(data); }
  bool is_namespace() const { return std::holds_alternative<std::shared_ptr<Namespace>>(data); }
  bool is_callable() const { return std::holds_alternative<std::shared_ptr<const Callable>>(data); }

  bool as_bool() const { return std::get<bool>(data); }
  int64_t as_int() const { return std::get<int64_t>(data); }
  double as_float() const { return std::get<double>(data); }
  const std::string& as_string() const { return std::get<std::string>(data); }
  const List& as_list() const { return *std::get<std::shared_ptr<const List>>(data); }
  const Dict& as_dict() const { return *std::get<std::shared_ptr<const Dict>>(data); }
  Namespace& as_namespace() const { return *std::get<std::shared_ptr<Namespace>>(data); }
  const Callable& as_callable() const { return *std::get<std::shared_ptr<const Callable>>(data); }
  const std::string& undefined_name() const { return std::get<Undefined>(data).name; }

  // Python's name for the type, for error messages ("str", "list", "NoneType", ...).
  const char* type_name() const;
  // Python truthiness; Undefined is falsy.
  bool truthy() const;
  // int/bool/float as double (for arithmetic and comparisons); caller checks is_number().
  double number() const;
};

// A Python dict with string keys, in insertion order (JSON objects keep their order).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  void set(std::string key, Value value);
};

// jinja2's namespace(): the one mutable object, for `{% set ns.attr = ... %}`.
struct Namespace {
  Dict attributes;
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct Callable {
  std::string name;
  std::function<Value(const CallArgs&)> call;
};

inline Value::Value(Dict dict) : data(std::make_shared<const Dict>(std::move(dict))) {}
inline Value::Value(Callable callable) : data(std::make_shared<const Callable>(std::move(callable))) {}

// str(value) as jinja2 prints it: None -> "None", True -> "True", floats as Python repr, lists
// and dicts as Python repr, Undefined -> "".
std::string to_str(const Value& value);
// repr(value): strings quoted the way Python quotes them.
std::string to_repr(const Value& value);
// Python ==, with 1 == 1.0 == True.
bool values_equal(const Value& a, const Value& b);
// Python <: negative, zero, positive; throws EvalError naming the types where Python would raise
// TypeError.
int compare_values(const Value& a, const Value& b);
// Python float repr: shortest round-trip digits, exponent outside [1e-4, 1e16).
std::string format_python_float(double value);

// JSON data (messages, tools, kwargs) as template values: objects become dicts, arrays lists.
// ordered_json keeps the document's key order, which tojson reproduces. Throws EvalError for
// input nested deeper than max_json_input_depth (arrays/objects).
inline constexpr int max_json_input_depth = 256;
Value from_json(const nlohmann::json& json);
Value from_json(const nlohmann::ordered_json& json);

}  // namespace tandem::jinja
