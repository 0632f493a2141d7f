#include "tandem/formats/gguf_writer.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "tandem/error.hpp"

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kVersion = 3;
constexpr size_t kFileBufferBytes = size_t{4} << 20;

uint64_t padding(uint64_t offset, uint64_t alignment) { return (alignment - offset % alignment) % alignment; }

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // GGUF is little-endian, as are our hosts
  out.append(b, sizeof(T));
}

void put_string(std::string& out, std::string_view s) {
  put(out, static_cast<uint64_t>(s.size()));
  out.append(s);
}

[[noreturn]] void wrong_value(const std::string& key, const char* why) {
  throw Error(ErrorKind::invalid_argument, "GGUF metadata " + key + ": " + why);
}

uint64_t unsigned_of(const std::string& key, const GgufValue& v, uint64_t max) {
  const auto* u = std::get_if<uint64_t>(&v.value);
  if (!u) wrong_value(key, "an unsigned type holds no unsigned value");
  if (*u > max) wrong_value(key, "value out of range for its type");
  return *u;
}

int64_t signed_of(const std::string& key, const GgufValue& v, int64_t min, int64_t max) {
  const auto* i = std::get_if<int64_t>(&v.value);
  if (!i) wrong_value(key, "a signed type holds no signed value");
  if (*i < min || *i > max) wrong_value(key, "value out of range for its type");
  return *i;
}

double float_of(const std::string& key, const GgufValue& v) {
  const auto* d = std::get_if<double>(&v.value);
  if (!d) wrong_value(key, "a float type holds no float value");
  return *d;
}

void encode_value(std::string& out, const std::string& key, GgufType type, const GgufValue& v, int depth);

void encode_array(std::string& out, const std::string& key, const GgufArray& a, int depth) {
  if (depth > 8) wrong_value(key, "arrays nested deeper than 8");
  put(out, static_cast<uint32_t>(a.element_type));
  if (a.element_type == GgufType::string && a.values.empty()) {
    put(out, static_cast<uint64_t>(a.string_ends.size()));
    for (size_t i = 0; i < a.string_ends.size(); ++i) put_string(out, a.string_at(i));
    return;
  }
  put(out, static_cast<uint64_t>(a.values.size()));
  for (const GgufValue& e : a.values) {
    if (e.type != a.element_type) wrong_value(key, "an array element's type differs from the array's");
    encode_value(out, key, e.type, e, depth + 1);
  }
}

void encode_value(std::string& out, const std::string& key, GgufType type, const GgufValue& v, int depth) {
  switch (type) {
    case GgufType::u8: put(out, static_cast<uint8_t>(unsigned_of(key, v, UINT8_MAX))); break;
    case GgufType::u16: put(out, static_cast<uint16_t>(unsigned_of(key, v, UINT16_MAX))); break;
    case GgufType::u32: put(out, static_cast<uint32_t>(unsigned_of(key, v, UINT32_MAX))); break;
    case GgufType::u64: put(out, unsigned_of(key, v, UINT64_MAX)); break;
    case GgufType::i8: put(out, static_cast<int8_t>(signed_of(key, v, INT8_MIN, INT8_MAX))); break;
    case GgufType::i16: put(out, static_cast<int16_t>(signed_of(key, v, INT16_MIN, INT16_MAX))); break;
    case GgufType::i32: put(out, static_cast<int32_t>(signed_of(key, v, INT32_MIN, INT32_MAX))); break;
    case GgufType::i64: put(out, signed_of(key, v, INT64_MIN, INT64_MAX)); break;
    case GgufType::f32: put(out, static_cast<float>(float_of(key, v))); break;
    case GgufType::f64: put(out, float_of(key, v)); break;
    case GgufType::boolean: {
      const auto* b = std::get_if<bool>(&v.value);
      if (!b) wrong_value(key, "a bool holds no bool value");
      put(out, static_cast<uint8_t>(*b));
      break;
    }
    case GgufType::string: {
      const auto* s = std::get_if<std::string>(&v.value);
      if (!s) wrong_value(key, "a string holds no string value");
      put_string(out, *s);
      break;
    }
    case GgufType::array: {
      const auto* a = std::get_if<GgufArray>(&v.value);
      if (!a) wrong_value(key, "an array holds no array value");
      encode_array(out, key, *a, depth);
      break;
    }
    default: wrong_value(key, "unknown GGUF value type");
  }
}

[[noreturn]] void io_failure(const std::string& path, const std::string& what, int error) {
  throw Error(ErrorKind::io, path + ": cannot " + what + ": " + std::strerror(error));
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

void write_bytes(std::FILE* f, const std::string& path, const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, f) != bytes) io_failure(path, "write", errno);
}

void write_zeros(std::FILE* f, const std::string& path, uint64_t bytes) {
  static constexpr char zeros[64] = {};
  while (bytes) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, sizeof(zeros)));
    write_bytes(f, path, zeros, n);
    bytes -= n;
  }
}

}  // namespace

uint32_t gguf_type_id(DType type) {
  switch (type) {
    case DType::f32: return 0;
    case DType::f16: return 1;
    case DType::q4_0: return 2;
    case DType::q4_1: return 3;
    case DType::q5_0: return 6;
    case DType::q5_1: return 7;
    case DType::q8_0: return 8;
    case DType::q8_1: return 9;
    case DType::q2_k: return 10;
    case DType::q3_k: return 11;
    case DType::q4_k: return 12;
    case DType::q5_k: return 13;
    case DType::q6_k: return 14;
    case DType::q8_k: return 15;
    case DType::iq4_nl: return 20;
    case DType::iq4_xs: return 23;
    case DType::i8: return 24;
    case DType::i16: return 25;
    case DType::i32: return 26;
    case DType::i64: return 27;
    case DType::f64: return 28;
    case DType::bf16: return 30;
    default: break;
  }
  throw Error(ErrorKind::unsupported, "GGUF has no tensor type for " + std::string(dtype_name(type)));
}

void GgufWriter::DataSink::write(const void* data, size_t bytes) {
  if (bytes > remaining_)
    throw Error(ErrorKind::internal, path_ + ": tensor " + tensor_ + " was given " + std::to_string(bytes) +
                                         " bytes with only " + std::to_string(remaining_) + " left");
  write_bytes(file_, path_, data, bytes);
  remaining_ -= bytes;
}

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (uint64_t{1} << 20))
    throw Error(ErrorKind::invalid_argument,
                "GGUF alignment " + std::to_string(alignment) + " is not a power of two up to 1 MiB");
  if (alignment != 32) set_u32("general.alignment", static_cast<uint32_t>(alignment));
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key.empty()) throw Error(ErrorKind::invalid_argument, "GGUF metadata key is empty");
  for (const auto& kv : metadata_)
    if (kv.first == key) throw Error(ErrorKind::invalid_argument, "GGUF metadata key " + key + " is set twice");
  std::string check;
  encode_value(check, key, value.type, value, 0);  // refuse a malformed value now, not at write()
  metadata_.emplace_back(key, std::move(value));
}

namespace {
GgufValue make_value(GgufType type, std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> v) {
  GgufValue value;
  value.type = type;
  value.value = std::move(v);
  return value;
}
}  // namespace

void GgufWriter::set_u8(const std::string& key, uint8_t v) { set(key, make_value(GgufType::u8, uint64_t{v})); }
void GgufWriter::set_i8(const std::string& key, int8_t v) { set(key, make_value(GgufType::i8, int64_t{v})); }
void GgufWriter::set_u16(const std::string& key, uint16_t v) { set(key, make_value(GgufType::u16, uint64_t{v})); }
void GgufWriter::set_i16(const std::string& key, int16_t v) { set(key, make_value(GgufType::i16, int64_t{v})); }
void GgufWriter::set_u32(const std::string& key, uint32_t v) { set(key, make_value(GgufType::u32, uint64_t{v})); }
void GgufWriter::set_i32(const std::string& key, int32_t v) { set(key, make_value(GgufType::i32, int64_t{v})); }
void GgufWriter::set_u64(const std::string& key, uint64_t v) { set(key, make_value(GgufType::u64, v)); }
void GgufWriter::set_i64(const std::string& key, int64_t v) { set(key, make_value(GgufType::i64, v)); }
void GgufWriter::set_f32(const std::string& key, float v) { set(key, make_value(GgufType::f32, double{v})); }
void GgufWriter::set_f64(const std::string& key, double v) { set(key, make_value(GgufType::f64, v)); }
void GgufWriter::set_bool(const std::string& key, bool v) { set(key, make_value(GgufType::boolean, v)); }
void GgufWriter::set_string(const std::string& key, std::string v) {
  set(key, make_value(GgufType::string, std::move(v)));
}

void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  GgufArray a;
  a.element_type = GgufType::i32;
  a.values.reserve(v.size());
  for (int32_t x : v) a.values.push_back(make_value(GgufType::i32, int64_t{x}));
  set(key, make_value(GgufType::array, std::move(a)));
}

void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
  GgufArray a;
  a.element_type = GgufType::f32;
  a.values.reserve(v.size());
  for (float x : v) a.values.push_back(make_value(GgufType::f32, double{x}));
  set(key, make_value(GgufType::array, std::move(a)));
}

void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  GgufArray a;
  a.element_type = GgufType::string;
  a.string_ends.reserve(v.size());
  for (const std::string& s : v) {
    a.string_bytes += s;
    a.string_ends.push_back(a.string_bytes.size());
  }
  set(key, make_value(GgufType::array, std::move(a)));
}

const GgufWriter::TensorInfo& GgufWriter::add_tensor(const std::string& name, DType dtype, std::vector<int64_t> dims) {
  auto fail = [&](const std::string& why) {
    return Error(ErrorKind::invalid_argument, "GGUF tensor " + name + ": " + why);
  };
  if (name.empty()) throw Error(ErrorKind::invalid_argument, "GGUF tensor name is empty");
  for (const TensorInfo& t : tensors_)
    if (t.name == name) throw fail("added twice");
  if (dims.empty() || dims.size() > 4) throw fail("rank " + std::to_string(dims.size()) + " (GGUF holds 1 to 4)");
  uint64_t rows = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] <= 0) throw fail("dimension " + std::to_string(dims[i]) + " is not positive");
    if (i + 1 < dims.size()) {
      if (rows > UINT64_MAX / static_cast<uint64_t>(dims[i])) throw fail("too many elements");
      rows *= static_cast<uint64_t>(dims[i]);
    }
  }
  gguf_type_id(dtype);
  const auto row = row_bytes(dtype, dims.back());
  if (!row)
    throw fail("rows of " + std::to_string(dims.back()) + " are not whole " + std::string(dtype_name(dtype)) +
               " blocks");
  if (*row && rows > UINT64_MAX / 2 / *row) throw fail("too many bytes");
  TensorInfo info;
  info.name = name;
  info.dtype = dtype;
  info.dims = std::move(dims);
  info.offset = data_bytes_ + padding(data_bytes_, alignment_);
  info.nbytes = rows * *row;
  data_bytes_ = info.offset + info.nbytes;
  tensors_.push_back(std::move(info));
  return tensors_.back();
}

uint64_t GgufWriter::header_bytes() const {
  std::string scratch;
  uint64_t bytes = 4 + 4 + 8 + 8;
  for (const auto& [key, value] : metadata_) {
    scratch.clear();
    encode_value(scratch, key, value.type, value, 0);
    bytes += 8 + key.size() + 4 + scratch.size();
  }
  for (const TensorInfo& t : tensors_) bytes += 8 + t.name.size() + 4 + 8 * t.dims.size() + 4 + 8;
  return bytes;
}

uint64_t GgufWriter::file_bytes() const {
  const uint64_t header = header_bytes();
  return header + padding(header, alignment_) + data_bytes_;
}

void GgufWriter::write(const std::string& path, const FillTensor& fill) const {
  std::vector<char> buffer(kFileBufferBytes);  // declared first: it must outlive the FILE
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "wb"));
  if (!file) io_failure(path, "create the file", errno);
  std::setvbuf(file.get(), buffer.data(), _IOFBF, buffer.size());
  try {
    std::string head;
    put(head, kMagic);
    put(head, kVersion);
    put(head, static_cast<uint64_t>(tensors_.size()));
    put(head, static_cast<uint64_t>(metadata_.size()));
    for (const auto& [key, value] : metadata_) {
      put_string(head, key);
      put(head, static_cast<uint32_t>(value.type));
      encode_value(head, key, value.type, value, 0);
    }
    for (const TensorInfo& t : tensors_) {
      put_string(head, t.name);
      put(head, static_cast<uint32_t>(t.dims.size()));
      for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) put(head, static_cast<uint64_t>(*it));
      put(head, gguf_type_id(t.dtype));
      put(head, t.offset);
    }
    head.append(padding(head.size(), alignment_), '\0');
    write_bytes(file.get(), path, head.data(), head.size());
    uint64_t written = 0;
    for (const TensorInfo& t : tensors_) {
      write_zeros(file.get(), path, t.offset - written);
      DataSink sink(file.get(), path, t.name, t.nbytes);
      fill(t, sink);
      if (sink.remaining())
        throw Error(ErrorKind::internal, path + ": tensor " + t.name + " was written " +
                                             std::to_string(t.nbytes - sink.remaining()) + " of its " +
                                             std::to_string(t.nbytes) + " bytes");
      written = t.offset + t.nbytes;
    }
    if (std::fflush(file.get()) != 0) io_failure(path, "write", errno);
    if (std::fclose(file.release()) != 0) io_failure(path, "close", errno);
  } catch (...) {
    file.reset();
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
    throw;
  }
}

}  // namespace tandem
