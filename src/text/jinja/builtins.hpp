#pragma once
// The filters, tests, str/dict methods and global functions templates may call, with jinja2's
// (and Python's) semantics. Each throws EvalError for bad arguments or an unknown name.
#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>

#include "text/jinja/value.hpp"

namespace tandem::jinja {

// Strings, lists and the whole output are capped so a hostile template cannot exhaust memory.
inline constexpr size_t max_value_bytes = size_t{64} << 20;
inline constexpr size_t max_range_items = size_t{1} << 20;

// Binds positional and keyword arguments to parameter names, Python style.
class BoundArgs {
 public:
  BoundArgs(const CallArgs& args, std::initializer_list<const char*> params, std::string_view function);
  const Value& operator[](size_t index) const { return values_[index]; }
  bool has(size_t index) const { return !values_[index].is_undefined(); }

 private:
  std::vector<Value> values_;
};

bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);
Value apply_filter(std::string_view name, const Value& value, const CallArgs& args);
bool apply_test(std::string_view name, const Value& value, const CallArgs& args);
// obj.method(args) for str and dict (and the few list methods templates use); `found` is set
// false when the object has no such method (the caller then tries an attribute).
Value call_method(const Value& object, std::string_view method, const CallArgs& args, bool& found);
// Items a for-loop visits: list items, dict keys, string characters; Undefined is empty.
List iterate(const Value& value);
// Python's `item in container`.
bool contains(const Value& container, const Value& item);
// Python's obj[index] as jinja2 resolves it (missing -> Undefined).
Value get_item(const Value& object, const Value& index);
// Python's object[start:stop:step] for lists and strings.
Value slice_value(const Value& object, const Value& start, const Value& stop, const Value& step);
// Global functions: range, namespace, dict, raise_exception, strftime_now.
const Dict& builtin_globals();

}  // namespace tandem::jinja
