#include "tandem/formats/gguf.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "formats/checked_shape.hpp"
#include "tandem/error.hpp"

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read little-endian
constexpr int kMaxArrayNesting = 8;
// Bounds memory for garbled but in-range counts: a real tokenizer array has < 1M entries.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 22;
// Tensor counts are only bounded by the bytes left, which can be gigabytes: the info list grows with
// what is actually parsed rather than being reserved up front from a count.
constexpr uint64_t kMaxReserve = 4096;
// Parsed metadata may cost this many times the bytes it was read from, plus a fixed allowance. A
// real vocabulary costs ~4x its bytes; a one-byte array element costs a whole GgufValue (48 bytes),
// so without a bound a few MB of file could take gigabytes.
constexpr uint64_t kMetadataMemoryFactor = 16;
constexpr uint64_t kMetadataMemoryAllowance = uint64_t{64} << 20;

[[noreturn]] void corrupt(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::corrupt_file, file + ": " + what);
}

// GGUF tensor type ids (ggml_type) for the types Tandem reads.
std::optional<DType> dtype_from_gguf_id(uint32_t id) {
  switch (id) {
    case 0: return DType::f32;
    case 1: return DType::f16;
    case 2: return DType::q4_0;
    case 3: return DType::q4_1;
    case 6: return DType::q5_0;
    case 7: return DType::q5_1;
    case 8: return DType::q8_0;
    case 9: return DType::q8_1;
    case 10: return DType::q2_k;
    case 11: return DType::q3_k;
    case 12: return DType::q4_k;
    case 13: return DType::q5_k;
    case 14: return DType::q6_k;
    case 15: return DType::q8_k;
    case 20: return DType::iq4_nl;
    case 23: return DType::iq4_xs;
    case 24: return DType::i8;
    case 25: return DType::i16;
    case 26: return DType::i32;
    case 27: return DType::i64;
    case 28: return DType::f64;
    case 30: return DType::bf16;
    default: return std::nullopt;
  }
}

// Bounds-checked little-endian reads over the file image; every failure names what was being read.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, uint64_t size, const std::string& file) : data_(data), size_(size), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <typename T>
  T read(const char* what) {
    if (remaining() < sizeof(T)) truncated(what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // GGUF is little-endian, as are our hosts
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what.c_str());
    if (len > remaining()) {
      corrupt(file_, what + ": string length " + std::to_string(len) + " exceeds the " +
                         std::to_string(remaining()) + " bytes left in the file");
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

  [[noreturn]] void truncated(const std::string& what) const {
    corrupt(file_, "truncated at byte " + std::to_string(pos_) + " while reading " + what);
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& file_;
};

// The fewest bytes one array element of `t` can occupy, to bound counts by the bytes left.
uint64_t min_encoded_bytes(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: case GgufType::string: return 8;
    case GgufType::array: return 12;
  }
  return 1;
}

bool valid_gguf_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::f64); }

// Charges the memory parsed metadata will hold against what the bytes read so far allow.
class MetadataBudget {
 public:
  explicit MetadataBudget(const std::string& file) : file_(file) {}

  // `cost` more bytes of memory, for values that reach at least byte `encoded_end` of the file (an
  // array is charged up front, with the least its elements can occupy).
  void charge(uint64_t cost, uint64_t encoded_end, const std::string& where) {
    used_ += cost;
    encoded_end_ = std::max(encoded_end_, encoded_end);
    const uint64_t limit = kMetadataMemoryAllowance + kMetadataMemoryFactor * encoded_end_;
    if (used_ > limit) {
      corrupt(file_, where + ": metadata would take more than " + std::to_string(limit) + " bytes of memory (" +
                         std::to_string(kMetadataMemoryFactor) + "x its " + std::to_string(encoded_end_) +
                         " bytes in the file + " + std::to_string(kMetadataMemoryAllowance >> 20) + " MiB)");
    }
  }

 private:
  const std::string& file_;
  uint64_t used_ = 0;
  uint64_t encoded_end_ = 0;
};

// What one map entry costs beyond its value's own heap: the node, its key and the red-black links.
constexpr uint64_t kMapNodeBytes = sizeof(std::pair<const std::string, GgufValue>) + 32;

// [offset, offset + nbytes) of one tensor in the data section.
struct DataRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  size_t tensor = 0;
};

// Tensors sharing bytes would alias weights meant to be independent, and no writer produces them:
// one of the offsets is wrong, and we cannot tell which. In offset order the first overlap is
// always with the range just before, so sorting makes this O(n log n).
void check_no_overlap(std::vector<DataRange> ranges, const std::vector<TensorEntry>& tensors, const std::string& file) {
  std::sort(ranges.begin(), ranges.end(), [](const DataRange& a, const DataRange& b) { return a.begin < b.begin; });
  const auto describe = [&](const DataRange& d) {
    return "'" + tensors[d.tensor].name + "' [offset " + std::to_string(d.begin) + ", " + std::to_string(d.end - d.begin) +
           " bytes]";
  };
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end)
      corrupt(file, "tensors " + describe(ranges[i - 1]) + " and " + describe(ranges[i]) + " overlap in the data section");
  }
}

struct ParsedPart {
  uint32_t version = 0;
  uint64_t alignment = 32;
  std::map<std::string, GgufValue> metadata;
  std::vector<TensorEntry> tensors;
};

}  // namespace

class GgufParser {
 public:
  static ParsedPart parse(const uint8_t* data, uint64_t size, const std::string& file) {
    ByteReader r(data, size, file);
    ParsedPart part;
    const uint32_t magic = r.read<uint32_t>("the magic");
    if (magic != kMagic) corrupt(file, "bad magic: not a GGUF file");
    part.version = r.read<uint32_t>("the version");
    if (part.version == 1) throw Error(ErrorKind::unsupported, file + ": GGUF version 1 is not supported (need 2 or 3)");
    if (part.version != 2 && part.version != 3) {
      corrupt(file, "bad version " + std::to_string(part.version) + " (need 2 or 3; a big-endian file?)");
    }
    const uint64_t tensor_count = r.read<uint64_t>("the tensor count");
    const uint64_t kv_count = r.read<uint64_t>("the metadata count");
    // Smallest encodings: a key/value is 8 (key length) + 4 (type) + 1 byte; a tensor info is
    // 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes.
    if (kv_count > r.remaining() / 13) {
      corrupt(file, "metadata count " + std::to_string(kv_count) + " is impossible in a file of " + std::to_string(size) + " bytes");
    }
    if (tensor_count > r.remaining() / 24) {
      corrupt(file, "tensor count " + std::to_string(tensor_count) + " is impossible in a file of " + std::to_string(size) + " bytes");
    }

    MetadataBudget budget(file);
    for (uint64_t i = 0; i < kv_count; ++i) {
      std::string key = r.read_string("metadata key #" + std::to_string(i));
      const std::string where = "metadata key '" + key + "'";
      budget.charge(kMapNodeBytes + key.size(), r.pos(), where);
      const uint32_t type = r.read<uint32_t>(where.c_str());
      GgufValue value = read_value(r, type, where, 0, file, budget);
      if (!part.metadata.emplace(std::move(key), std::move(value)).second) corrupt(file, "duplicate " + where);
    }
    if (const auto it = part.metadata.find("general.alignment"); it != part.metadata.end()) {
      int64_t a = 0;
      try {
        a = it->second.as_int();
      } catch (const Error& e) {
        corrupt(file, std::string("general.alignment: ") + e.what());
      }
      if (a <= 0 || (a & (a - 1)) != 0) corrupt(file, "general.alignment " + std::to_string(a) + " is not a power of two");
      part.alignment = static_cast<uint64_t>(a);
    }

    struct RawInfo {
      std::string name;
      Shape shape;
      DType dtype;
      uint64_t offset;
    };
    std::vector<RawInfo> infos;
    infos.reserve(std::min(tensor_count, kMaxReserve));
    for (uint64_t i = 0; i < tensor_count; ++i) {
      RawInfo info;
      info.name = r.read_string("the name of tensor #" + std::to_string(i));
      const std::string where = "tensor '" + info.name + "'";
      const uint32_t n_dims = r.read<uint32_t>(where.c_str());
      if (n_dims > static_cast<uint32_t>(kMaxDims)) {
        corrupt(file, where + ": " + std::to_string(n_dims) + " dims (at most " + std::to_string(kMaxDims) + ")");
      }
      info.shape.rank = static_cast<int>(n_dims);
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t ne = r.read<uint64_t>(where.c_str());
        if (ne == 0 || ne > static_cast<uint64_t>(INT64_MAX)) corrupt(file, where + ": dim " + std::to_string(d) + " is " + std::to_string(ne));
        // GGUF lists ne innermost first; views are outermost first.
        info.shape.dims[n_dims - 1 - d] = static_cast<int64_t>(ne);
      }
      const uint32_t type_id = r.read<uint32_t>(where.c_str());
      const auto dtype = dtype_from_gguf_id(type_id);
      if (!dtype) {
        throw Error(ErrorKind::unsupported, file + ": " + where + " has GGUF tensor type id " + std::to_string(type_id) +
                                                ", which Tandem does not support");
      }
      info.dtype = *dtype;
      info.offset = r.read<uint64_t>(where.c_str());
      infos.push_back(std::move(info));
    }

    const uint64_t data_start = (r.pos() + part.alignment - 1) / part.alignment * part.alignment;
    if (data_start > size && !infos.empty()) corrupt(file, "data section starts past the end of the file");
    std::vector<DataRange> ranges;
    ranges.reserve(infos.size());
    for (RawInfo& info : infos) {
      const std::string where = "tensor '" + info.name + "'";
      if (!formats::checked_elements(info.shape)) corrupt(file, where + ": shape " + info.shape.to_string() + " overflows");
      const DTypeTraits& tr = dtype_traits(info.dtype);
      if (info.shape.back() % tr.block_elems != 0) {
        corrupt(file, where + ": row of " + std::to_string(info.shape.back()) + " values is not a whole number of " +
                          std::string(tr.name) + " blocks (" + std::to_string(tr.block_elems) + ")");
      }
      const auto nbytes = formats::checked_tensor_bytes(info.dtype, info.shape);
      if (!nbytes) corrupt(file, where + ": shape " + info.shape.to_string() + " overflows");
      if (info.offset % part.alignment != 0) {
        corrupt(file, where + ": data offset " + std::to_string(info.offset) + " is not a multiple of the alignment " +
                          std::to_string(part.alignment));
      }
      uint64_t begin = 0, end = 0;
      if (__builtin_add_overflow(data_start, info.offset, &begin) || __builtin_add_overflow(begin, *nbytes, &end) || end > size) {
        corrupt(file, where + ": data [offset " + std::to_string(info.offset) + ", " + std::to_string(*nbytes) +
                          " bytes] extends past the end of the file (" + std::to_string(size) + " bytes)");
      }
      ranges.push_back({info.offset, info.offset + *nbytes, part.tensors.size()});
      TensorEntry e;
      e.name = std::move(info.name);
      e.file = file;
      e.view.dtype = info.dtype;
      e.view.shape = info.shape;
      e.view.data = data + begin;
      e.view.nbytes = *nbytes;
      part.tensors.push_back(std::move(e));
    }
    check_no_overlap(std::move(ranges), part.tensors, file);
    return part;
  }

  static GgufValue read_value(ByteReader& r, uint32_t type, const std::string& where, int depth, const std::string& file,
                              MetadataBudget& budget) {
    if (!valid_gguf_type(type)) corrupt(file, where + ": unknown value type " + std::to_string(type));
    GgufValue v;
    v.type = static_cast<GgufType>(type);
    const char* w = where.c_str();
    switch (v.type) {
      case GgufType::u8: v.value = uint64_t{r.read<uint8_t>(w)}; break;
      case GgufType::u16: v.value = uint64_t{r.read<uint16_t>(w)}; break;
      case GgufType::u32: v.value = uint64_t{r.read<uint32_t>(w)}; break;
      case GgufType::u64: v.value = r.read<uint64_t>(w); break;
      case GgufType::i8: v.value = int64_t{r.read<int8_t>(w)}; break;
      case GgufType::i16: v.value = int64_t{r.read<int16_t>(w)}; break;
      case GgufType::i32: v.value = int64_t{r.read<int32_t>(w)}; break;
      case GgufType::i64: v.value = r.read<int64_t>(w); break;
      case GgufType::f32: v.value = double{r.read<float>(w)}; break;
      case GgufType::f64: v.value = r.read<double>(w); break;
      case GgufType::boolean: {
        const uint8_t b = r.read<uint8_t>(w);
        if (b > 1) corrupt(file, where + ": bool value " + std::to_string(b));
        v.value = b != 0;
        break;
      }
      case GgufType::string: {
        std::string s = r.read_string(where);
        budget.charge(s.size(), r.pos(), where);
        v.value = std::move(s);
        break;
      }
      case GgufType::array: {
        if (depth >= kMaxArrayNesting) corrupt(file, where + ": arrays nested deeper than " + std::to_string(kMaxArrayNesting));
        const uint32_t elem_type = r.read<uint32_t>(w);
        if (!valid_gguf_type(elem_type)) corrupt(file, where + ": unknown array element type " + std::to_string(elem_type));
        const uint64_t count = r.read<uint64_t>(w);
        if (count > r.remaining() / min_encoded_bytes(static_cast<GgufType>(elem_type)) || count > kMaxArrayElements) {
          corrupt(file, where + ": array count " + std::to_string(count) + " exceeds what the " +
                            std::to_string(r.remaining()) + " bytes left can hold");
        }
        // Charged and reserved in full before parsing: the count is bounded by the bytes left and the
        // budget, and an exact reserve avoids the 2x of growing by doubling.
        const uint64_t element_bytes =
            elem_type == static_cast<uint32_t>(GgufType::string) ? sizeof(uint64_t) : sizeof(GgufValue);
        budget.charge(count * element_bytes, r.pos() + count * min_encoded_bytes(static_cast<GgufType>(elem_type)),
                      where);
        GgufArray arr;
        arr.element_type = static_cast<GgufType>(elem_type);
        if (arr.element_type == GgufType::string) {
          arr.string_ends.reserve(count);
          for (uint64_t i = 0; i < count; ++i) {
            const std::string s = r.read_string(where);
            budget.charge(s.size(), r.pos(), where);
            arr.string_bytes += s;
            arr.string_ends.push_back(arr.string_bytes.size());
          }
          arr.string_bytes.shrink_to_fit();
        } else {
          arr.values.reserve(count);
          for (uint64_t i = 0; i < count; ++i)
            arr.values.push_back(read_value(r, elem_type, where, depth + 1, file, budget));
        }
        v.value = std::move(arr);
        break;
      }
    }
    return v;
  }

  static void adopt_first(GgufFile& out, ParsedPart& part, const std::string& file) {
    out.version_ = part.version;
    out.alignment_ = part.alignment;
    out.metadata_ = std::move(part.metadata);
    add_tensors(out, part);
    out.file_paths_.push_back(file);
  }

  static void add_tensors(GgufFile& out, ParsedPart& part) {
    for (TensorEntry& e : part.tensors) out.tensors_.add(std::move(e));
  }
};

GgufFile GgufFile::from_memory(const void* data, uint64_t size, const std::string& name) {
  GgufFile out;
  ParsedPart part = GgufParser::parse(static_cast<const uint8_t*>(data), size, name);
  GgufParser::adopt_first(out, part, name);
  return out;
}

namespace {

struct SplitName {
  std::string prefix;  // NAME in NAME-0000k-of-0000N.gguf
  int count = 1;
};

// Split sets are named NAME-0000k-of-0000N.gguf (k from 1, five digits each).
std::optional<SplitName> parse_split_name(const std::string& filename) {
  static constexpr std::string_view kShape = "-00000-of-00000.gguf";
  if (filename.size() < kShape.size()) return std::nullopt;
  const size_t at = filename.size() - kShape.size();
  int count = 0;
  for (size_t i = 0; i < kShape.size(); ++i) {
    const char c = filename[at + i];
    if (kShape[i] == '0') {
      if (c < '0' || c > '9') return std::nullopt;
      if (i >= 10) count = count * 10 + (c - '0');
    } else if (c != kShape[i]) {
      return std::nullopt;
    }
  }
  return SplitName{filename.substr(0, at), count};
}

std::optional<int64_t> split_key(const std::map<std::string, GgufValue>& md, const std::string& key, const std::string& file) {
  const auto it = md.find(key);
  if (it == md.end()) return std::nullopt;
  try {
    return it->second.as_int();
  } catch (const Error& e) {
    corrupt(file, key + ": " + e.what());
  }
}

}  // namespace

GgufFile GgufFile::open(const std::string& path) {
  // Any part of a split set opens the whole set.
  const auto split_name = parse_split_name(std::filesystem::path(path).filename().string());
  const int name_count = split_name ? split_name->count : 1;

  auto open_part = [](const std::string& p, std::shared_ptr<MappedFile>& map) {
    map = std::make_shared<MappedFile>(p);
    return GgufParser::parse(map->data(), map->size(), p);
  };

  GgufFile out;
  if (name_count <= 1) {
    std::shared_ptr<MappedFile> map;
    ParsedPart part = open_part(path, map);
    const auto count = split_key(part.metadata, "split.count", path);
    if (count && *count > 1) {
      corrupt(path, "split.count is " + std::to_string(*count) + " but the file name does not follow NAME-00001-of-" +
                        std::to_string(*count) + ".gguf, so the other parts cannot be found");
    }
    GgufParser::adopt_first(out, part, path);
    out.maps_.push_back(std::move(map));
    return out;
  }

  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  const std::string& prefix = split_name->prefix;
  int64_t expected_tensors = -1;
  for (int k = 1; k <= name_count; ++k) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "-%05d-of-%05d.gguf", k, name_count);
    const std::string part_path = (folder / (prefix + suffix)).string();
    if (!std::filesystem::exists(part_path)) {
      throw Error(ErrorKind::io, path + ": split part " + std::to_string(k) + " of " + std::to_string(name_count) +
                                     " is missing (" + part_path + ")");
    }
    std::shared_ptr<MappedFile> map;
    ParsedPart part = open_part(part_path, map);
    const auto no = split_key(part.metadata, "split.no", part_path);
    const auto count = split_key(part.metadata, "split.count", part_path);
    if (!no || !count) corrupt(part_path, "split part without split.no / split.count metadata");
    if (*count != name_count) {
      corrupt(part_path, "split.count is " + std::to_string(*count) + " but the file name says " + std::to_string(name_count));
    }
    if (*no != k - 1) corrupt(part_path, "split.no is " + std::to_string(*no) + ", expected " + std::to_string(k - 1));
    if (k == 1) {
      const auto total = split_key(part.metadata, "split.tensors.count", part_path);
      if (!total) corrupt(part_path, "first split part without split.tensors.count");
      expected_tensors = *total;
      GgufParser::adopt_first(out, part, part_path);
    } else {
      GgufParser::add_tensors(out, part);
      out.file_paths_.push_back(part_path);
    }
    out.maps_.push_back(std::move(map));
  }
  if (static_cast<int64_t>(out.tensors_.size()) != expected_tensors) {
    corrupt(out.file_paths_.front(), "split.tensors.count is " + std::to_string(expected_tensors) + " but the " +
                                         std::to_string(name_count) + " parts hold " + std::to_string(out.tensors_.size()) +
                                         " tensors");
  }
  return out;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::require(const std::string& key) const {
  if (const GgufValue* v = find(key)) return *v;
  throw Error(ErrorKind::corrupt_file, (file_paths_.empty() ? std::string("GGUF") : file_paths_.front()) +
                                           ": missing metadata key '" + key + "'");
}

namespace {
template <typename F>
auto typed_get(const GgufFile& f, const std::string& key, F&& get) -> std::optional<decltype(get(std::declval<const GgufValue&>()))> {
  const GgufValue* v = f.find(key);
  if (!v) return std::nullopt;
  try {
    return get(*v);
  } catch (const Error& e) {
    throw Error(ErrorKind::corrupt_file, (f.files().empty() ? std::string("GGUF") : f.files().front()) + ": metadata key '" +
                                             key + "': " + e.what());
  }
}
}  // namespace

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_int(); });
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_float(); });
}

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_string(); });
}

std::string GgufFile::architecture() const {
  const auto a = get_string("general.architecture");
  if (!a) require("general.architecture");  // throws naming the key and file
  return *a;
}

}  // namespace tandem
