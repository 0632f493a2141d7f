// Shared helpers for the builtins: argument binding, iteration, membership, indexing, slicing,
// and the global functions.
#include "text/jinja/builtins.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <optional>

#include "tandem/error.hpp"
#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

BoundArgs::BoundArgs(const CallArgs& args, std::initializer_list<const char*> params,
                     std::string_view function)
    : values_(params.size()) {
  if (args.positional.size() > params.size())
    throw EvalError(fmt::format("{}() takes at most {} arguments ({} given)", function, params.size(),
                                args.positional.size()));
  for (size_t k = 0; k < args.positional.size(); ++k) values_[k] = args.positional[k];
  for (const auto& [key, value] : args.keyword) {
    size_t index = 0;
    for (const char* param : params) {
      if (key == param) break;
      ++index;
    }
    if (index == params.size())
      throw EvalError(fmt::format("{}() got an unexpected keyword argument '{}'", function, key));
    values_[index] = value;
  }
}

List iterate(const Value& value) {
  if (value.is_undefined()) return {};
  if (value.is_list()) {
    List items = value.as_list();
    items.is_tuple = false;
    return items;
  }
  if (value.is_dict()) {
    List keys;
    for (const auto& [key, item] : value.as_dict().items) keys.emplace_back(key);
    return keys;
  }
  if (value.is_string()) {
    List chars;
    const std::string& text = value.as_string();
    auto offsets = code_point_offsets(text);
    for (size_t k = 0; k + 1 < offsets.size(); ++k)
      chars.emplace_back(text.substr(offsets[k], offsets[k + 1] - offsets[k]));
    return chars;
  }
  throw EvalError(fmt::format("'{}' object is not iterable", value.type_name()));
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string())
      throw EvalError(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
    return container.as_string().find(item.as_string()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const auto& element : container.as_list())
      if (values_equal(element, item)) return true;
    return false;
  }
  if (container.is_dict()) return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
  if (container.is_undefined()) return false;
  throw EvalError(fmt::format("argument of type '{}' is not iterable", container.type_name()));
}

namespace {
bool integer_index(const Value& index, int64_t& out) {
  if (index.is_int())
    out = index.as_int();
  else if (index.is_bool())
    out = index.as_bool();
  else
    return false;
  return true;
}
}  // namespace

Value get_item(const Value& object, const Value& index) {
  int64_t position = 0;
  if (object.is_dict()) {
    if (index.is_string())
      if (const Value* found = object.as_dict().find(index.as_string())) return *found;
    return Value::undefined(index.is_string() ? index.as_string() : to_str(index));
  }
  if (object.is_namespace() && index.is_string())
    if (const Value* found = object.as_namespace().attributes.find(index.as_string())) return *found;
  if (object.is_list() && integer_index(index, position)) {
    const List& list = object.as_list();
    auto size = static_cast<int64_t>(list.size());
    if (position < 0) position += size;
    if (position >= 0 && position < size) return list[static_cast<size_t>(position)];
  }
  if (object.is_string() && integer_index(index, position)) {
    const std::string& text = object.as_string();
    auto offsets = code_point_offsets(text);
    auto size = static_cast<int64_t>(offsets.size() - 1);
    if (position < 0) position += size;
    if (position >= 0 && position < size)
      return Value(text.substr(offsets[position], offsets[position + 1] - offsets[position]));
  }
  if (object.is_undefined()) throw EvalError(fmt::format("'{}' is undefined", object.undefined_name()));
  return Value::undefined(to_str(index));
}

Value slice_value(const Value& object, const Value& start_value, const Value& stop_value,
                  const Value& step_value) {
  auto read = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    int64_t out = 0;
    if (!integer_index(v, out))
      throw EvalError(fmt::format("slice {} must be an integer, not {}", what, v.type_name()));
    return out;
  };
  int64_t step = read(step_value, "step").value_or(1);
  if (step == 0) throw EvalError("slice step cannot be zero");
  std::vector<size_t> offsets;
  int64_t length = 0;
  if (object.is_list()) {
    length = static_cast<int64_t>(object.as_list().size());
  } else if (object.is_string()) {
    offsets = code_point_offsets(object.as_string());
    length = static_cast<int64_t>(offsets.size() - 1);
  } else if (object.is_undefined()) {
    throw EvalError(fmt::format("'{}' is undefined", object.undefined_name()));
  } else {
    throw EvalError(fmt::format("'{}' object is not subscriptable", object.type_name()));
  }
  // Python's slice.indices()
  auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) x += length;
    if (step > 0) return std::clamp<int64_t>(x, 0, length);
    return std::clamp<int64_t>(x, -1, length - 1);
  };
  int64_t start = clamp(read(start_value, "start"), step > 0 ? 0 : length - 1);
  int64_t stop = clamp(read(stop_value, "stop"), step > 0 ? length : -1);
  std::vector<size_t> picked;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) picked.push_back(static_cast<size_t>(k));
  if (object.is_list()) {
    List out;
    out.reserve(picked.size());
    for (size_t k : picked) out.push_back(object.as_list()[k]);
    return Value(std::move(out));
  }
  const std::string& text = object.as_string();
  std::string out;
  for (size_t k : picked) out.append(text, offsets[k], offsets[k + 1] - offsets[k]);
  return Value(std::move(out));
}

namespace {

Value range_function(const CallArgs& args) {
  if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3)
    throw EvalError("range() takes 1 to 3 positional arguments");
  int64_t bounds[3] = {0, 0, 1};
  for (size_t k = 0; k < args.positional.size(); ++k)
    if (!integer_index(args.positional[k], bounds[args.positional.size() == 1 ? 1 : k]))
      throw EvalError(
          fmt::format("range() argument must be an integer, not {}", args.positional[k].type_name()));
  auto [start, stop, step] = bounds;
  if (step == 0) throw EvalError("range() arg 3 must not be zero");
  List out;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
    if (out.size() >= max_range_items)
      throw EvalError(fmt::format("range() longer than {} items", max_range_items));
    out.emplace_back(k);
  }
  return Value(std::move(out));
}

Dict keyword_dict(const CallArgs& args, const char* function) {
  Dict dict;
  for (const auto& positional : args.positional) {
    if (!positional.is_dict())
      throw EvalError(fmt::format("{}() positional argument must be a dict", function));
    for (const auto& [key, value] : positional.as_dict().items) dict.set(key, value);
  }
  for (const auto& [key, value] : args.keyword) dict.set(key, value);
  return dict;
}

Value strftime_now(const CallArgs& args) {
  BoundArgs bound(args, {"format"}, "strftime_now");
  if (!bound[0].is_string()) throw EvalError("strftime_now() needs a format string");
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[512];
  size_t length = std::strftime(buffer, sizeof buffer, bound[0].as_string().c_str(), &local);
  return Value(std::string(buffer, length));
}

}  // namespace

const Dict& builtin_globals() {
  static const Dict globals = [] {
    Dict dict;
    dict.set("range", Value(Callable{"range", range_function}));
    dict.set("namespace", Value(Callable{"namespace", [](const CallArgs& args) {
                                           auto ns = std::make_shared<Namespace>();
                                           ns->attributes = keyword_dict(args, "namespace");
                                           return Value(std::move(ns));
                                         }}));
    dict.set("dict",
             Value(Callable{"dict", [](const CallArgs& args) { return Value(keyword_dict(args, "dict")); }}));
    dict.set("raise_exception",
             Value(Callable{"raise_exception", [](const CallArgs& args) -> Value {
                              BoundArgs bound(args, {"message"}, "raise_exception");
                              throw Error(ErrorKind::invalid_argument,
                                          "chat template raised an exception: " + to_str(bound[0]));
                            }}));
    dict.set("strftime_now", Value(Callable{"strftime_now", strftime_now}));
    return dict;
  }();
  return globals;
}

}  // namespace tandem::jinja
