#include "text/jinja/json_dump.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "text/jinja/unicode.hpp"

namespace tandem::jinja {

namespace {

void append_hex_escape(std::string& out, unsigned unit) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "\\u%04x", unit & 0xFFFFu);
  out += hex;
}

void dump_string(std::string& out, const std::string& text, bool ensure_ascii) {
  out += '"';
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp = decode_code_point(text, pos);
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (cp < 0x20 || (ensure_ascii && cp >= 0x7F)) {
          if (cp >= 0x10000) {
            char32_t v = cp - 0x10000;
            append_hex_escape(out, 0xD800 | (v >> 10));
            append_hex_escape(out, 0xDC00 | (v & 0x3FF));
          } else {
            append_hex_escape(out, cp);
          }
        } else {
          append_utf8(out, cp);
        }
    }
  }
  out += '"';
}

class Dumper {
 public:
  explicit Dumper(const JsonDumpOptions& options) : options_(options) {
    if (options.separators) {
      item_separator_ = options.separators->first;
      key_separator_ = options.separators->second;
    } else {
      item_separator_ = options.indent ? "," : ", ";
      key_separator_ = ": ";
    }
  }

  void dump(std::string& out, const Value& value, int depth) {
    if (depth > 512) throw EvalError("tojson: nesting deeper than 512 levels");
    if (value.is_none()) {
      out += "null";
    } else if (value.is_bool()) {
      out += value.as_bool() ? "true" : "false";
    } else if (value.is_int()) {
      out += std::to_string(value.as_int());
    } else if (value.is_float()) {
      double f = value.as_float();
      out += std::isnan(f)   ? "NaN"
             : std::isinf(f) ? (f < 0 ? "-Infinity" : "Infinity")
                             : format_python_float(f);
    } else if (value.is_string()) {
      dump_string(out, value.as_string(), options_.ensure_ascii);
    } else if (value.is_list()) {
      const List& list = value.as_list();
      if (list.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < list.size(); ++k) {
        if (k) out += item_separator_;
        newline(out, depth + 1);
        dump(out, list[k], depth + 1);
      }
      newline(out, depth);
      out += ']';
    } else if (value.is_dict()) {
      auto items = value.as_dict().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      if (options_.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += item_separator_;
        newline(out, depth + 1);
        dump_string(out, items[k].first, options_.ensure_ascii);
        out += key_separator_;
        dump(out, items[k].second, depth + 1);
      }
      newline(out, depth);
      out += '}';
    } else {
      throw EvalError(std::string("tojson: Object of type ") + value.type_name() +
                      " is not JSON serializable");
    }
  }

 private:
  void newline(std::string& out, int depth) const {
    if (!options_.indent) return;
    out += '\n';
    for (int k = 0; k < depth; ++k) out += *options_.indent;
  }

  const JsonDumpOptions& options_;
  std::string item_separator_, key_separator_;
};

}  // namespace

std::string python_json_dumps(const Value& value, const JsonDumpOptions& options) {
  std::string out;
  Dumper(options).dump(out, value, 0);
  return out;
}

}  // namespace tandem::jinja
