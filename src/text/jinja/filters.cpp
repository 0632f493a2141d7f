// jinja2's builtin filters (the ones chat templates use), plus transformers' `tojson`.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_map>

#include "text/jinja/builtins.hpp"
#include "text/jinja/json_dump.hpp"
#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

namespace {

using Filter = std::function<Value(const Value&, const CallArgs&)>;

// jinja2 filters that work on text convert their input with str() first.
std::string text_of(const Value& value) { return to_str(value); }

Value attribute_of(const Value& item, const std::string& path) {
  Value current = item;
  size_t start = 0;
  while (true) {  // dotted paths: "function.name"
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (current.is_undefined()) return current;
    bool numeric =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    current = get_item(current, numeric ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

Value tojson(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
  JsonDumpOptions options;
  options.ensure_ascii = bound[0].truthy();
  if (bound[1].is_int())
    options.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, bound[1].as_int())), ' ');
  else if (bound[1].is_string())
    options.indent = bound[1].as_string();
  if (bound[2].is_list() && bound[2].as_list().size() == 2)
    options.separators = std::make_pair(to_str(bound[2].as_list()[0]), to_str(bound[2].as_list()[1]));
  options.sort_keys = bound[3].truthy();
  return Value(python_json_dumps(value, options));
}

Value length(const Value& value, const CallArgs&) {
  if (value.is_string()) return Value(static_cast<int64_t>(code_point_count(value.as_string())));
  if (value.is_list()) return Value(static_cast<int64_t>(value.as_list().size()));
  if (value.is_dict()) return Value(static_cast<int64_t>(value.as_dict().items.size()));
  if (value.is_undefined()) return Value(0);
  throw EvalError(fmt::format("object of type '{}' has no len()", value.type_name()));
}

Value first_or_last(const Value& value, bool first) {
  List items = iterate(value);
  if (items.empty()) return Value::undefined(first ? "first" : "last");
  return first ? items.front() : items.back();
}

Value join(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"d", "attribute"}, "join");
  std::string separator = bound.has(0) ? text_of(bound[0]) : "";
  std::string out;
  bool first = true;
  for (const auto& item : iterate(value)) {
    if (!first) out += separator;
    first = false;
    out += text_of(bound.has(1) ? attribute_of(item, text_of(bound[1])) : item);
    if (out.size() > max_value_bytes) throw EvalError("join: result too large");
  }
  return Value(std::move(out));
}

Value default_filter(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"default_value", "boolean"}, "default");
  bool use_default = bound[1].truthy() ? !value.truthy() : value.is_undefined();
  if (!use_default) return value;
  return bound.has(0) ? bound[0] : Value("");
}

Value items(const Value& value, const CallArgs&) {
  if (value.is_undefined()) return Value(List{});
  if (!value.is_dict())
    throw EvalError(fmt::format("filter 'items' expects a mapping, got {}", value.type_name()));
  List out;
  for (const auto& [key, item] : value.as_dict().items) out.emplace_back(make_tuple({Value(key), item}));
  return Value(std::move(out));
}

Value replace(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"old", "new", "count"}, "replace");
  std::string text = text_of(value), old_text = text_of(bound[0]), new_text = text_of(bound[1]);
  int64_t count = bound[2].is_int() ? bound[2].as_int() : -1;
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  if (old_text.empty()) {  // Python inserts `new` between every character
    auto offsets = code_point_offsets(text);
    for (size_t k = 0; k + 1 < offsets.size(); ++k) {
      if (count < 0 || done < count) out += new_text, ++done;
      out.append(text, offsets[k], offsets[k + 1] - offsets[k]);
    }
    if (count < 0 || done < count) out += new_text;
    return Value(std::move(out));
  }
  while (count < 0 || done < count) {
    size_t found = text.find(old_text, pos);
    if (found == std::string::npos) break;
    out.append(text, pos, found - pos);
    out += new_text;
    pos = found + old_text.size();
    ++done;
    if (out.size() > max_value_bytes) throw EvalError("replace: result too large");
  }
  out.append(text, pos);
  return Value(std::move(out));
}

Value reverse(const Value& value, const CallArgs&) {
  if (value.is_string()) {
    List chars = iterate(value);
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += it->as_string();
    return Value(std::move(out));
  }
  List items = iterate(value);
  std::reverse(items.begin(), items.end());
  return Value(std::move(items));
}

Value to_int(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"default", "base"}, "int");
  Value fallback = bound.has(0) ? bound[0] : Value(0);
  if (value.is_int()) return value;
  if (value.is_bool()) return Value(int64_t{value.as_bool()});
  if (value.is_float())
    return std::isfinite(value.as_float()) ? Value(static_cast<int64_t>(value.as_float())) : fallback;
  if (!value.is_string()) return fallback;
  std::string text = strip_chars(value.as_string(), nullptr, true, true);
  int base = bound[1].is_int() ? static_cast<int>(bound[1].as_int()) : 10;
  try {
    size_t used = 0;
    long long parsed = std::stoll(text, &used, base);
    if (used == text.size()) return Value(static_cast<int64_t>(parsed));
    double as_double = std::stod(text, &used);
    if (used == text.size() && std::isfinite(as_double)) return Value(static_cast<int64_t>(as_double));
  } catch (const std::exception&) {
  }
  return fallback;
}

Value to_float(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"default"}, "float");
  Value fallback = bound.has(0) ? bound[0] : Value(0.0);
  if (value.is_number()) return Value(value.number());
  if (!value.is_string()) return fallback;
  std::string text = strip_chars(value.as_string(), nullptr, true, true);
  try {
    size_t used = 0;
    double parsed = std::stod(text, &used);
    if (used == text.size()) return Value(parsed);
  } catch (const std::exception&) {
  }
  return fallback;
}

Value map_filter(const Value& value, const CallArgs& args) {
  List out;
  const Value* attribute = nullptr;
  const Value* fallback = nullptr;
  for (const auto& [key, item] : args.keyword) {
    if (key == "attribute")
      attribute = &item;
    else if (key == "default")
      fallback = &item;
  }
  if (attribute) {
    for (const auto& item : iterate(value)) {
      Value mapped = attribute_of(item, text_of(*attribute));
      out.push_back(mapped.is_undefined() && fallback ? *fallback : mapped);
    }
    return Value(std::move(out));
  }
  if (args.positional.empty() || !args.positional[0].is_string())
    throw EvalError("map() needs a filter name or attribute=");
  CallArgs rest{{args.positional.begin() + 1, args.positional.end()}, args.keyword};
  for (const auto& item : iterate(value))
    out.push_back(apply_filter(args.positional[0].as_string(), item, rest));
  return Value(std::move(out));
}

// select / reject / selectattr / rejectattr
Value select_filter(const Value& value, const CallArgs& args, bool by_attribute, bool keep_matches) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.positional.empty()) throw EvalError("selectattr/rejectattr need an attribute name");
    attribute = text_of(args.positional[next++]);
  }
  std::string test;
  if (next < args.positional.size()) test = text_of(args.positional[next++]);
  CallArgs test_args{{args.positional.begin() + static_cast<std::ptrdiff_t>(next), args.positional.end()},
                     {}};
  List out;
  for (const auto& item : iterate(value)) {
    Value subject = by_attribute ? attribute_of(item, attribute) : item;
    bool match = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (match == keep_matches) out.push_back(item);
  }
  return Value(std::move(out));
}

Value sort_filter(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"reverse", "case_sensitive", "attribute"}, "sort");
  List items = iterate(value);
  bool case_sensitive = bound[1].truthy();
  auto key = [&](const Value& item) {
    Value k = bound.has(2) ? attribute_of(item, text_of(bound[2])) : item;
    if (!case_sensitive && k.is_string()) return Value(to_lower(k.as_string()));
    return k;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Value& a, const Value& b) { return compare_values(key(a), key(b)) < 0; });
  if (bound[0].truthy()) std::reverse(items.begin(), items.end());
  return Value(std::move(items));
}

Value unique_filter(const Value& value, const CallArgs&) {
  List out;
  for (const auto& item : iterate(value)) {
    bool seen = false;
    for (const auto& kept : out) seen = seen || values_equal(kept, item);
    if (!seen) out.push_back(item);
  }
  return Value(std::move(out));
}

Value indent_filter(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"width", "first", "blank"}, "indent");
  std::string pad =
      bound[0].is_string()
          ? bound[0].as_string()
          : std::string(static_cast<size_t>(bound[0].is_int() ? std::max<int64_t>(0, bound[0].as_int()) : 4),
                        ' ');
  std::string text = text_of(value);
  std::string out;
  size_t start = 0;
  bool first_line = true;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    bool blank = strip_chars(line, nullptr, true, true).empty();
    if ((first_line ? bound[1].truthy() : true) && (!blank || bound[2].truthy())) out += pad;
    out += line;
    first_line = false;
    if (end == std::string::npos) break;
    out += '\n';
    start = end + 1;
  }
  return Value(std::move(out));
}

Value escape_html(const Value& value, const CallArgs&) {
  std::string out;
  for (char c : text_of(value)) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return Value(std::move(out));
}

Value round_filter(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"precision", "method"}, "round");
  if (!value.is_number())
    throw EvalError(fmt::format("filter 'round' expects a number, got {}", value.type_name()));
  int64_t precision = bound[0].is_int() ? bound[0].as_int() : 0;
  std::string method = bound.has(1) ? text_of(bound[1]) : "common";
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = value.number() * scale;
  double rounded = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::nearbyint(x);
  return Value(rounded / scale);
}

Value sum_filter(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"attribute", "start"}, "sum");
  bool all_int = !bound.has(1) || bound[1].is_int();
  int64_t int_total = bound[1].is_int() ? bound[1].as_int() : 0;
  double total = bound.has(1) ? bound[1].number() : 0.0;
  for (const auto& item : iterate(value)) {
    Value v = bound.has(0) ? attribute_of(item, text_of(bound[0])) : item;
    if (!v.is_number()) throw EvalError(fmt::format("sum: cannot add '{}'", v.type_name()));
    all_int = all_int && !v.is_float();
    if (!v.is_float()) int_total += v.is_bool() ? v.as_bool() : v.as_int();
    total += v.number();
  }
  return all_int ? Value(int_total) : Value(total);
}

Value min_max(const Value& value, bool want_max) {
  List items = iterate(value);
  if (items.empty()) return Value::undefined(want_max ? "max" : "min");
  Value best = items[0];
  for (const auto& item : items)
    if (want_max ? compare_values(item, best) > 0 : compare_values(item, best) < 0) best = item;
  return best;
}

Value dictsort(const Value& value, const CallArgs& args) {
  BoundArgs bound(args, {"case_sensitive", "by", "reverse"}, "dictsort");
  List pairs = items(value, {}).as_list();
  size_t position = bound.has(1) && text_of(bound[1]) == "value" ? 1 : 0;
  bool case_sensitive = bound[0].truthy();
  auto key = [&](const Value& pair) {
    Value k = pair.as_list()[position];
    return !case_sensitive && k.is_string() ? Value(to_lower(k.as_string())) : k;
  };
  std::stable_sort(pairs.begin(), pairs.end(),
                   [&](const Value& a, const Value& b) { return compare_values(key(a), key(b)) < 0; });
  if (bound[2].truthy()) std::reverse(pairs.begin(), pairs.end());
  return Value(std::move(pairs));
}

const std::unordered_map<std::string_view, Filter>& filters() {
  static const std::unordered_map<std::string_view, Filter> table = {
      {"tojson", tojson},
      {"length", length},
      {"count", length},
      {"string", [](const Value& v, const CallArgs&) { return Value(text_of(v)); }},
      {"safe", [](const Value& v, const CallArgs&) { return v; }},
      {"trim",
       [](const Value& v, const CallArgs& a) {
         BoundArgs bound(a, {"chars"}, "trim");
         std::string chars = bound.has(0) ? text_of(bound[0]) : "";
         return Value(strip_chars(text_of(v), bound.has(0) ? &chars : nullptr, true, true));
       }},
      {"lower", [](const Value& v, const CallArgs&) { return Value(to_lower(text_of(v))); }},
      {"upper", [](const Value& v, const CallArgs&) { return Value(to_upper(text_of(v))); }},
      {"capitalize", [](const Value& v, const CallArgs&) { return Value(capitalize(text_of(v))); }},
      {"title", [](const Value& v, const CallArgs&) { return Value(title_case(text_of(v))); }},
      {"first", [](const Value& v, const CallArgs&) { return first_or_last(v, true); }},
      {"last", [](const Value& v, const CallArgs&) { return first_or_last(v, false); }},
      {"join", join},
      {"default", default_filter},
      {"d", default_filter},
      {"items", items},
      {"list", [](const Value& v, const CallArgs&) { return Value(iterate(v)); }},
      {"replace", replace},
      {"reverse", reverse},
      {"int", to_int},
      {"float", to_float},
      {"abs",
       [](const Value& v, const CallArgs&) {
         if (v.is_int()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
         if (v.is_number()) return Value(std::fabs(v.number()));
         throw EvalError(fmt::format("bad operand type for abs(): '{}'", v.type_name()));
       }},
      {"round", round_filter},
      {"map", map_filter},
      {"select", [](const Value& v, const CallArgs& a) { return select_filter(v, a, false, true); }},
      {"reject", [](const Value& v, const CallArgs& a) { return select_filter(v, a, false, false); }},
      {"selectattr", [](const Value& v, const CallArgs& a) { return select_filter(v, a, true, true); }},
      {"rejectattr", [](const Value& v, const CallArgs& a) { return select_filter(v, a, true, false); }},
      {"attr",
       [](const Value& v, const CallArgs& a) {
         BoundArgs bound(a, {"name"}, "attr");
         return v.is_dict() || v.is_namespace() ? get_item(v, Value(text_of(bound[0])))
                                                : Value::undefined(text_of(bound[0]));
       }},
      {"sort", sort_filter},
      {"dictsort", dictsort},
      {"unique", unique_filter},
      {"sum", sum_filter},
      {"min", [](const Value& v, const CallArgs&) { return min_max(v, false); }},
      {"max", [](const Value& v, const CallArgs&) { return min_max(v, true); }},
      {"indent", indent_filter},
      {"escape", escape_html},
      {"e", escape_html},
      {"wordcount",
       [](const Value& v, const CallArgs&) {
         int64_t words = 0;
         bool in_word = false;
         std::string text = text_of(v);
         for (size_t pos = 0; pos < text.size();) {
           bool space = is_python_space(decode_code_point(text, pos));
           if (!space && !in_word) ++words;
           in_word = !space;
         }
         return Value(words);
       }},
  };
  return table;
}

}  // namespace

bool is_known_filter(std::string_view name) { return filters().count(name) != 0; }

Value apply_filter(std::string_view name, const Value& value, const CallArgs& args) {
  auto found = filters().find(name);
  if (found == filters().end()) throw EvalError(fmt::format("unknown filter '{}'", name));
  return found->second(value, args);
}

}  // namespace tandem::jinja
