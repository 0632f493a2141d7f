// Python str and dict methods templates call: content.startswith(...), message.get(...), ...
#include <fmt/core.h>
#include <utf8proc.h>

#include <algorithm>

#include "text/jinja/builtins.hpp"
#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

namespace {

const std::string& string_argument(const Value& v, std::string_view method) {
  if (!v.is_string())
    throw EvalError(fmt::format("str.{}() argument must be str, not {}", method, v.type_name()));
  return v.as_string();
}

int64_t code_point_index(const std::string& text, size_t byte_offset) {
  return static_cast<int64_t>(code_point_count(std::string_view(text).substr(0, byte_offset)));
}

List split_whitespace(const std::string& text, int64_t max_splits, bool from_right) {
  // Words as code-point runs of non-space, Python's str.split() / rsplit() with no separator.
  std::vector<std::pair<size_t, size_t>> words;
  size_t word_start = std::string::npos;
  for (size_t pos = 0; pos < text.size();) {
    size_t start = pos;
    bool space = is_python_space(decode_code_point(text, pos));
    if (!space && word_start == std::string::npos) word_start = start;
    if (space && word_start != std::string::npos) {
      words.emplace_back(word_start, start);
      word_start = std::string::npos;
    }
  }
  if (word_start != std::string::npos) words.emplace_back(word_start, text.size());
  List out;
  if (max_splits < 0 || static_cast<size_t>(max_splits) + 1 >= words.size()) {
    for (auto [a, b] : words) out.emplace_back(text.substr(a, b - a));
    return out;
  }
  auto keep = static_cast<size_t>(max_splits);
  if (!from_right) {
    for (size_t k = 0; k < keep; ++k)
      out.emplace_back(text.substr(words[k].first, words[k].second - words[k].first));
    // the remainder keeps its inner and trailing whitespace, as Python does
    out.emplace_back(text.substr(words[keep].first));
  } else {
    size_t split_from = words.size() - keep;
    out.emplace_back(text.substr(0, words[split_from - 1].second));
    for (size_t k = split_from; k < words.size(); ++k)
      out.emplace_back(text.substr(words[k].first, words[k].second - words[k].first));
  }
  return out;
}

List split_on(const std::string& text, const std::string& separator, int64_t max_splits, bool from_right) {
  if (separator.empty()) throw EvalError("empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t pos = 0;
    int64_t done = 0;
    while (max_splits < 0 || done < max_splits) {
      size_t found = text.find(separator, pos);
      if (found == std::string::npos) break;
      parts.push_back(text.substr(pos, found - pos));
      pos = found + separator.size();
      ++done;
    }
    parts.push_back(text.substr(pos));
  } else {
    size_t end = text.size();
    int64_t done = 0;
    while (max_splits < 0 || done < max_splits) {
      if (end < separator.size()) break;
      size_t found = text.rfind(separator, end - separator.size());
      if (found == std::string::npos) break;
      parts.insert(parts.begin(), text.substr(found + separator.size(), end - found - separator.size()));
      end = found;
      ++done;
    }
    parts.insert(parts.begin(), text.substr(0, end));
  }
  List out;
  for (auto& part : parts) out.emplace_back(std::move(part));
  return out;
}

bool affix_matches(const std::string& text, const Value& affix, bool prefix, std::string_view method) {
  auto one = [&](const Value& candidate) {
    const std::string& a = string_argument(candidate, method);
    if (a.size() > text.size()) return false;
    return prefix ? text.compare(0, a.size(), a) == 0
                  : text.compare(text.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_list()) {
    for (const auto& candidate : affix.as_list())
      if (one(candidate)) return true;
    return false;
  }
  return one(affix);
}

template <typename Predicate>
bool all_code_points(const std::string& text, Predicate predicate) {
  if (text.empty()) return false;
  for (size_t pos = 0; pos < text.size();)
    if (!predicate(decode_code_point(text, pos))) return false;
  return true;
}

utf8proc_category_t category(char32_t cp) { return utf8proc_category(static_cast<utf8proc_int32_t>(cp)); }
bool is_alpha(char32_t cp) {
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO;
}
bool is_digit(char32_t cp) { return category(cp) == UTF8PROC_CATEGORY_ND; }

// str.format with {} / {0} / {name} fields and no format specs.
std::string format_string(const std::string& pattern, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < pattern.size(); ++k) {
    char c = pattern[k];
    if ((c == '{' || c == '}') && k + 1 < pattern.size() && pattern[k + 1] == c) {
      out += c;
      ++k;
      continue;
    }
    if (c == '}') throw EvalError("str.format: single '}' in format string");
    if (c != '{') {
      out += c;
      continue;
    }
    size_t close = pattern.find('}', k);
    if (close == std::string::npos) throw EvalError("str.format: unclosed '{' in format string");
    std::string field = pattern.substr(k + 1, close - k - 1);
    if (field.find_first_of(":!") != std::string::npos)
      throw EvalError("str.format: format specs are not supported");
    const Value* value = nullptr;
    if (field.empty() ||
        std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t index = field.empty() ? auto_index++ : std::stoul(field);
      if (index >= args.positional.size()) throw EvalError("str.format: replacement index out of range");
      value = &args.positional[index];
    } else {
      for (const auto& [key, item] : args.keyword)
        if (key == field) value = &item;
      if (!value) throw EvalError(fmt::format("str.format: no argument named '{}'", field));
    }
    out += to_str(*value);
    k = close;
  }
  return out;
}

Value string_method(const std::string& text, std::string_view method, const CallArgs& args, bool& found) {
  found = true;
  auto strip = [&](bool left, bool right) {
    BoundArgs bound(args, {"chars"}, method);
    if (bound[0].is_string()) return Value(strip_chars(text, &bound[0].as_string(), left, right));
    return Value(strip_chars(text, nullptr, left, right));
  };
  if (method == "strip") return strip(true, true);
  if (method == "lstrip") return strip(true, false);
  if (method == "rstrip") return strip(false, true);
  if (method == "startswith" || method == "endswith") {
    BoundArgs bound(args, {"prefix"}, method);
    return Value(affix_matches(text, bound[0], method == "startswith", method));
  }
  if (method == "split" || method == "rsplit") {
    BoundArgs bound(args, {"sep", "maxsplit"}, method);
    int64_t max_splits = bound[1].is_int() ? bound[1].as_int() : -1;
    bool from_right = method == "rsplit";
    if (!bound.has(0) || bound[0].is_none()) return Value(split_whitespace(text, max_splits, from_right));
    return Value(split_on(text, string_argument(bound[0], method), max_splits, from_right));
  }
  if (method == "splitlines") {
    List out;
    size_t start = 0;
    for (size_t k = 0; k < text.size(); ++k)
      if (text[k] == '\n' || text[k] == '\r') {
        out.emplace_back(text.substr(start, k - start));
        if (text[k] == '\r' && k + 1 < text.size() && text[k + 1] == '\n') ++k;
        start = k + 1;
      }
    if (start < text.size()) out.emplace_back(text.substr(start));
    return Value(std::move(out));
  }
  if (method == "replace") {
    BoundArgs bound(args, {"old", "new", "count"}, method);
    CallArgs filter_args{{bound[0], bound[1]}, {}};
    if (bound.has(2)) filter_args.positional.push_back(bound[2]);
    string_argument(bound[0], method);
    string_argument(bound[1], method);
    return apply_filter("replace", Value(text), filter_args);
  }
  if (method == "find" || method == "rfind" || method == "index" || method == "rindex" || method == "count") {
    BoundArgs bound(args, {"sub"}, method);
    const std::string& sub = string_argument(bound[0], method);
    if (method == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(code_point_count(text) + 1));
      int64_t count = 0;
      for (size_t pos = text.find(sub); pos != std::string::npos; pos = text.find(sub, pos + sub.size()))
        ++count;
      return Value(count);
    }
    size_t pos = method[0] == 'r' ? text.rfind(sub) : text.find(sub);
    if (pos == std::string::npos) {
      if (method == "index" || method == "rindex") throw EvalError("substring not found");
      return Value(-1);
    }
    return Value(code_point_index(text, pos));
  }
  if (method == "lower") return Value(to_lower(text));
  if (method == "upper") return Value(to_upper(text));
  if (method == "title") return Value(title_case(text));
  if (method == "capitalize") return Value(capitalize(text));
  if (method == "format") return Value(format_string(text, args));
  if (method == "join") {
    BoundArgs bound(args, {"iterable"}, method);
    std::string out;
    bool first = true;
    for (const auto& item : iterate(bound[0])) {
      if (!first) out += text;
      first = false;
      out += string_argument(item, "join");
    }
    return Value(std::move(out));
  }
  if (method == "removeprefix" || method == "removesuffix") {
    BoundArgs bound(args, {"affix"}, method);
    const std::string& affix = string_argument(bound[0], method);
    bool prefix = method == "removeprefix";
    if (!affix_matches(text, bound[0], prefix, method)) return Value(text);
    return Value(prefix ? text.substr(affix.size()) : text.substr(0, text.size() - affix.size()));
  }
  if (method == "isdigit" || method == "isnumeric" || method == "isdecimal")
    return Value(all_code_points(text, is_digit));
  if (method == "isalpha") return Value(all_code_points(text, is_alpha));
  if (method == "isalnum")
    return Value(all_code_points(text, [](char32_t cp) { return is_alpha(cp) || is_digit(cp); }));
  if (method == "isspace") return Value(all_code_points(text, is_python_space));
  if (method == "islower") return Value(to_lower(text) == text && to_upper(text) != text);
  if (method == "isupper") return Value(to_upper(text) == text && to_lower(text) != text);
  found = false;
  return {};
}

Value dict_method(const Dict& dict, std::string_view method, const CallArgs& args, bool& found) {
  found = true;
  if (method == "items" || method == "keys" || method == "values") {
    BoundArgs bound(args, {}, method);
    List out;
    for (const auto& [key, value] : dict.items) {
      if (method == "items")
        out.emplace_back(make_tuple({Value(key), value}));
      else if (method == "keys")
        out.emplace_back(key);
      else
        out.push_back(value);
    }
    return Value(std::move(out));
  }
  if (method == "get") {
    BoundArgs bound(args, {"key", "default"}, method);
    if (bound[0].is_string())
      if (const Value* value = dict.find(bound[0].as_string())) return *value;
    return bound.has(1) ? bound[1] : Value(None{});
  }
  found = false;
  return {};
}

}  // namespace

Value call_method(const Value& object, std::string_view method, const CallArgs& args, bool& found) {
  if (object.is_string()) return string_method(object.as_string(), method, args, found);
  if (object.is_dict()) return dict_method(object.as_dict(), method, args, found);
  found = false;
  return {};
}

}  // namespace tandem::jinja
