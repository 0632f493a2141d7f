#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"

#include <string>

namespace tandem {
namespace {

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::u8: return "u8";
    case GgufType::i8: return "i8";
    case GgufType::u16: return "u16";
    case GgufType::i16: return "i16";
    case GgufType::u32: return "u32";
    case GgufType::i32: return "i32";
    case GgufType::f32: return "f32";
    case GgufType::boolean: return "bool";
    case GgufType::string: return "string";
    case GgufType::array: return "array";
    case GgufType::u64: return "u64";
    case GgufType::i64: return "i64";
    case GgufType::f64: return "f64";
  }
  return "unknown";
}

[[noreturn]] void mismatch(GgufType actual, const char* wanted) {
  throw Error(ErrorKind::corrupt_file,
              std::string("GGUF value of type ") + gguf_type_name(actual) + " where " + wanted + " was expected");
}

}  // namespace

int64_t GgufValue::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u > static_cast<uint64_t>(INT64_MAX)) mismatch(type, "an integer within int64");
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  mismatch(type, "an integer");
}

double GgufValue::as_float() const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  mismatch(type, "a number");
}

bool GgufValue::as_bool() const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  mismatch(type, "a bool");
}

const std::string& GgufValue::as_string() const {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  mismatch(type, "a string");
}

const GgufArray& GgufValue::as_array() const {
  if (const auto* a = std::get_if<GgufArray>(&value)) return *a;
  mismatch(type, "an array");
}

std::string_view GgufArray::string_at(size_t i) const {
  if (element_type != GgufType::string)
    throw Error(ErrorKind::corrupt_file,
                std::string("GGUF array of ") + gguf_type_name(element_type) + " read as an array of strings");
  if (i >= string_ends.size())
    throw Error(ErrorKind::internal, "GGUF string array index " + std::to_string(i) + " out of range");
  const uint64_t begin = i == 0 ? 0 : string_ends[i - 1];
  return std::string_view(string_bytes).substr(begin, string_ends[i] - begin);
}

}  // namespace tandem
