#include "tandem/formats/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/checked_shape.hpp"
#include "tandem/error.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference implementation refuses larger headers; so do we, before parsing anything.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

[[noreturn]] void corrupt(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::corrupt_file, file + ": " + what);
}

std::optional<DType> safetensors_dtype(const std::string& s) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F32", DType::f32}, {"F16", DType::f16},   {"BF16", DType::bf16}, {"F64", DType::f64},
      {"F8_E4M3", DType::f8_e4m3}, {"I8", DType::i8}, {"I16", DType::i16}, {"I32", DType::i32},
      {"I64", DType::i64}, {"U8", DType::u8},     {"BOOL", DType::boolean},
  };
  for (const auto& [name, type] : kNames) {
    if (s == name) return type;
  }
  return std::nullopt;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct ByteRange {
  uint64_t begin, end;
  size_t entry;  // index into the table (pointers would dangle as it grows)
};

uint64_t json_offset(const json& v, const std::string& file, const std::string& tensor) {
  if (!v.is_number_unsigned()) corrupt(file, "tensor '" + tensor + "': data_offsets must be non-negative integers");
  return v.get<uint64_t>();
}

}  // namespace

class SafetensorsParser {
 public:
  // Adds the tensors of one safetensors image to `model`.
  static void parse(const uint8_t* data, uint64_t size, const std::string& file, SafetensorsModel& model) {
    if (size < 8) corrupt(file, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
    const uint64_t header_len = read_u64_le(data);
    if (header_len > size - 8) {
      corrupt(file, "header length " + std::to_string(header_len) + " exceeds the file size " + std::to_string(size));
    }
    if (header_len > kMaxHeaderBytes) corrupt(file, "header length " + std::to_string(header_len) + " is too large");
    // nlohmann's lexer stops at a NUL byte, which would let garbage after it pass unparsed.
    if (std::memchr(data + 8, 0, header_len) != nullptr) corrupt(file, "header is not valid JSON: it contains a NUL byte");
    json header;
    try {
      header = json::parse(data + 8, data + 8 + header_len);
    } catch (const json::exception& e) {
      corrupt(file, std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) corrupt(file, "header JSON is not an object");

    const uint8_t* section = data + 8 + header_len;
    const uint64_t section_bytes = size - 8 - header_len;
    std::vector<ByteRange> ranges;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) corrupt(file, "__metadata__ is not an object");
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string()) corrupt(file, "__metadata__ key '" + key + "' is not a string");
          model.metadata_.emplace(key, value.get<std::string>());
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (!entry.is_object()) corrupt(file, where + ": entry is not an object");
      const auto dtype_it = entry.find("dtype");
      const auto shape_it = entry.find("shape");
      const auto offsets_it = entry.find("data_offsets");
      if (dtype_it == entry.end() || !dtype_it->is_string()) corrupt(file, where + ": missing or non-string dtype");
      if (shape_it == entry.end() || !shape_it->is_array()) corrupt(file, where + ": missing or non-array shape");
      if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
        corrupt(file, where + ": data_offsets must be an array of two integers");
      }
      const std::string dtype_name = dtype_it->get<std::string>();
      const auto dtype = safetensors_dtype(dtype_name);
      if (!dtype) throw Error(ErrorKind::unsupported, file + ": " + where + ": unsupported dtype '" + dtype_name + "'");
      if (shape_it->size() > static_cast<size_t>(kMaxDims)) {
        throw Error(ErrorKind::unsupported, file + ": " + where + ": rank " + std::to_string(shape_it->size()) +
                                                " exceeds the supported " + std::to_string(kMaxDims));
      }
      Shape shape;
      for (const json& d : *shape_it) {
        if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
          corrupt(file, where + ": shape dims must be non-negative integers");
        }
        shape.dims[static_cast<size_t>(shape.rank++)] = static_cast<int64_t>(d.get<uint64_t>());
      }
      const auto expected_bytes = formats::checked_tensor_bytes(*dtype, shape);
      if (!expected_bytes) corrupt(file, where + ": shape " + shape.to_string() + " overflows");
      const uint64_t begin = json_offset((*offsets_it)[0], file, name);
      const uint64_t end = json_offset((*offsets_it)[1], file, name);
      const std::string range = "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
      if (begin > end) corrupt(file, where + ": data_offsets " + range + " are reversed");
      if (end > section_bytes) {
        corrupt(file, where + ": data_offsets " + range + " exceed the data section (" + std::to_string(section_bytes) + " bytes)");
      }
      if (end - begin != *expected_bytes) {
        corrupt(file, where + ": " + std::to_string(end - begin) + " bytes in data_offsets, but " + dtype_name + " " +
                          shape.to_string() + " needs " + std::to_string(*expected_bytes));
      }
      TensorEntry te;
      te.name = name;
      te.file = file;
      te.view.dtype = *dtype;
      te.view.shape = shape;
      te.view.data = section + begin;
      te.view.nbytes = end - begin;
      model.tensors_.add(std::move(te));
      ranges.push_back({begin, end, model.tensors_.size() - 1});
    }
    std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[i - 1].end) {
        const auto& entries = model.tensors_.entries();
        corrupt(file, "tensors '" + entries[ranges[i - 1].entry].name + "' and '" + entries[ranges[i].entry].name +
                          "' overlap in the data section");
      }
    }
  }

  static void open_file(const std::string& path, SafetensorsModel& model) {
    auto map = std::make_shared<MappedFile>(path);
    parse(map->data(), map->size(), path, model);
    model.file_paths_.push_back(path);
    model.maps_.push_back(std::move(map));
  }

  static void open_index(const std::string& index_path, SafetensorsModel& model) {
    const MappedFile index_map(index_path);
    json index;
    try {
      index = json::parse(index_map.data(), index_map.data() + index_map.size());
    } catch (const json::exception& e) {
      corrupt(index_path, std::string("index is not valid JSON: ") + e.what());
    }
    if (!index.is_object()) corrupt(index_path, "index JSON is not an object");
    const auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) corrupt(index_path, "missing or non-object weight_map");
    const fs::path folder = fs::path(index_path).parent_path();
    std::vector<std::string> shards;  // in order of first mention
    std::set<std::string> seen;
    for (const auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string()) corrupt(index_path, "weight_map entry for '" + tensor + "' is not a string");
      const std::string s = shard.get<std::string>();
      if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..") {
        corrupt(index_path, "weight_map entry for '" + tensor + "' names '" + s + "', not a plain file name");
      }
      if (seen.insert(s).second) shards.push_back(s);
    }
    for (const std::string& shard : shards) {
      const std::string shard_path = (folder / shard).string();
      if (!fs::exists(shard_path)) {
        throw Error(ErrorKind::io, index_path + ": shard '" + shard + "' named in weight_map is missing (" + shard_path + ")");
      }
      open_file(shard_path, model);
    }
    for (const auto& [tensor, shard] : wm->items()) {
      const TensorEntry* e = model.tensors_.find(tensor);
      const std::string expected_path = (folder / shard.get<std::string>()).string();
      if (!e || e->file != expected_path) {
        corrupt(index_path, "tensor '" + tensor + "' is listed for shard '" + shard.get<std::string>() + "' but missing from it");
      }
    }
  }
};

SafetensorsModel SafetensorsModel::from_memory(const void* data, uint64_t size, const std::string& name) {
  SafetensorsModel model;
  SafetensorsParser::parse(static_cast<const uint8_t*>(data), size, name, model);
  model.file_paths_.push_back(name);
  return model;
}

SafetensorsModel SafetensorsModel::open(const std::string& path) {
  SafetensorsModel model;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path folder(path);
    if (fs::exists(folder / "model.safetensors.index.json")) {
      SafetensorsParser::open_index((folder / "model.safetensors.index.json").string(), model);
    } else if (fs::exists(folder / "model.safetensors")) {
      SafetensorsParser::open_file((folder / "model.safetensors").string(), model);
    } else {
      throw Error(ErrorKind::io, path + ": folder holds neither model.safetensors nor model.safetensors.index.json");
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    SafetensorsParser::open_index(path, model);
  } else {
    SafetensorsParser::open_file(path, model);
  }
  return model;
}

}  // namespace tandem
