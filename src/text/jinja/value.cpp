#include "text/jinja/value.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

const char* Value::type_name() const {
  switch (data.index()) {
    case 0:
      return "Undefined";
    case 1:
      return "NoneType";
    case 2:
      return "bool";
    case 3:
      return "int";
    case 4:
      return "float";
    case 5:
      return "str";
    case 6:
      return "list";
    case 7:
      return "dict";
    case 8:
      return "Namespace";
    default:
      return "function";
  }
}

bool Value::truthy() const {
  if (is_undefined() || is_none()) return false;
  if (is_bool()) return as_bool();
  if (is_int()) return as_int() != 0;
  if (is_float()) return as_float() != 0.0;
  if (is_string()) return !as_string().empty();
  if (is_list()) return !as_list().empty();
  if (is_dict()) return !as_dict().items.empty();
  return true;
}

double Value::number() const {
  if (is_bool()) return as_bool() ? 1.0 : 0.0;
  if (is_int()) return static_cast<double>(as_int());
  return as_float();
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [name, value] : items)
    if (name == key) return &value;
  return nullptr;
}

void Dict::set(std::string key, Value value) {
  for (auto& [name, existing] : items)
    if (name == key) {
      existing = std::move(value);
      return;
    }
  items.emplace_back(std::move(key), std::move(value));
}

std::string format_python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  std::string scientific(buffer, result.ptr);
  // scientific = [-]d[.ddd]e(+|-)XX
  bool negative = scientific[0] == '-';
  auto e = scientific.find('e');
  std::string digits;
  for (size_t k = negative ? 1 : 0; k < e; ++k)
    if (scientific[k] != '.') digits += scientific[k];
  int exponent = std::stoi(scientific.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else if (static_cast<size_t>(exponent) + 1 >= digits.size()) {
      out += digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exponent_text[16];
  std::snprintf(exponent_text, sizeof exponent_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exponent_text;
}

namespace {
std::string repr_string(const std::string& text) {
  bool has_single = text.find('\'') != std::string::npos;
  bool has_double = text.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp = decode_code_point(text, pos);
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned>(cp));
      out += hex;
    } else {
      append_utf8(out, cp);
    }
  }
  return out + quote;
}
}  // namespace

List make_tuple(std::vector<Value> items) {
  List tuple;
  tuple.assign(std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
  tuple.is_tuple = true;
  return tuple;
}

std::string to_repr(const Value& value) {
  if (value.is_string()) return repr_string(value.as_string());
  if (value.is_list()) {
    const List& list = value.as_list();
    std::string out = list.is_tuple ? "(" : "[";
    bool first = true;
    for (const auto& item : list) {
      if (!first) out += ", ";
      first = false;
      out += to_repr(item);
    }
    if (list.is_tuple && list.size() == 1) out += ",";
    return out + (list.is_tuple ? ")" : "]");
  }
  if (value.is_dict()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [key, item] : value.as_dict().items) {
      if (!first) out += ", ";
      first = false;
      out += repr_string(key) + ": " + to_repr(item);
    }
    return out + "}";
  }
  if (value.is_undefined()) return "Undefined";
  return to_str(value);
}

std::string to_str(const Value& value) {
  switch (value.data.index()) {
    case 0:
      return "";
    case 1:
      return "None";
    case 2:
      return value.as_bool() ? "True" : "False";
    case 3:
      return std::to_string(value.as_int());
    case 4:
      return format_python_float(value.as_float());
    case 5:
      return value.as_string();
    case 6:
    case 7:
      return to_repr(value);
    case 8:
      return "<Namespace>";
    default:
      return "<function " + value.as_callable().name + ">";
  }
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if ((a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool()))
      return (a.is_bool() ? int64_t{a.as_bool()} : a.as_int()) ==
             (b.is_bool() ? int64_t{b.as_bool()} : b.as_int());
    return a.number() == b.number();
  }
  if (a.data.index() != b.data.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.as_string() == b.as_string();
  if (a.is_list()) {
    const auto &x = a.as_list(), &y = b.as_list();
    if (x.size() != y.size() || x.is_tuple != y.is_tuple) return false;
    for (size_t k = 0; k < x.size(); ++k)
      if (!values_equal(x[k], y[k])) return false;
    return true;
  }
  if (a.is_dict()) {
    const auto &x = a.as_dict(), &y = b.as_dict();
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [key, item] : x.items) {
      const Value* other = y.find(key);
      if (!other || !values_equal(item, *other)) return false;
    }
    return true;
  }
  if (a.is_namespace()) return &a.as_namespace() == &b.as_namespace();
  return &a.as_callable() == &b.as_callable();
}

int compare_values(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_int() && b.is_int()) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    double x = a.number(), y = b.number();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.as_string().compare(b.as_string());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list()) {
    const auto &x = a.as_list(), &y = b.as_list();
    for (size_t k = 0; k < x.size() && k < y.size(); ++k)
      if (!values_equal(x[k], y[k])) return compare_values(x[k], y[k]);
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  throw EvalError(std::string("cannot order '") + a.type_name() + "' and '" + b.type_name() + "'");
}

namespace {
template <typename Json>
Value convert_json(const Json& json, int depth) {
  // untrusted input (chat messages, tools, extra variables): bound the recursion
  if (depth > max_json_input_depth)
    throw EvalError("JSON input nested deeper than " + std::to_string(max_json_input_depth) + " levels");
  switch (json.type()) {
    case Json::value_t::null:
      return Value(None{});
    case Json::value_t::boolean:
      return Value(json.template get<bool>());
    case Json::value_t::number_integer:
      return Value(json.template get<int64_t>());
    case Json::value_t::number_unsigned: {
      auto u = json.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<double>(u));
      return Value(static_cast<int64_t>(u));
    }
    case Json::value_t::number_float:
      return Value(json.template get<double>());
    case Json::value_t::string:
      return Value(json.template get<std::string>());
    case Json::value_t::array: {
      List list;
      list.reserve(json.size());
      for (const auto& item : json) list.push_back(convert_json(item, depth + 1));
      return Value(std::move(list));
    }
    case Json::value_t::object: {
      Dict dict;
      dict.items.reserve(json.size());
      for (const auto& [key, item] : json.items()) dict.items.emplace_back(key, convert_json(item, depth + 1));
      return Value(std::move(dict));
    }
    default:
      throw EvalError("unsupported JSON value (binary) in template input");
  }
}
}  // namespace

Value from_json(const nlohmann::json& json) { return convert_json(json, 0); }
Value from_json(const nlohmann::ordered_json& json) { return convert_json(json, 0); }

}  // namespace tandem::jinja
