#pragma once
// GGUF v2/v3 reader: validated metadata, a zero-copy tensor table over mmapped file(s), and split
// sets (NAME-00001-of-0000N.gguf) merged into one table.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tandem/formats/mapped_file.hpp"
#include "tandem/formats/tensor_table.hpp"

namespace tandem {

enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8,
  array = 9, u64 = 10, i64 = 11, f64 = 12,
};

struct GgufValue;
struct GgufArray {
  GgufType element_type = GgufType::u8;
  // Elements of every type but string. String arrays (vocabularies: 100k+ entries) are kept
  // compact instead: their bytes concatenated, plus each one's end offset, so that a file of
  // millions of short strings costs about its own size in memory, not 48 bytes per entry more.
  std::vector<GgufValue> values;
  std::string string_bytes;
  std::vector<uint64_t> string_ends;

  size_t size() const;  // defined below, once GgufValue is complete
  // Element i of a string array; throws Error(corrupt_file) for another element type or i >= size().
  std::string_view string_at(size_t i) const;
};

struct GgufValue {
  GgufType type = GgufType::u8;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;

  // Typed reads that convert between integer widths; throw Error(corrupt_file) on a type mismatch.
  int64_t as_int() const;
  double as_float() const;  // integers convert too
  bool as_bool() const;
  const std::string& as_string() const;
  const GgufArray& as_array() const;
};

inline size_t GgufArray::size() const {
  return element_type == GgufType::string ? string_ends.size() : values.size();
}

// Whether `path` is a regular file that starts with the GGUF magic; false for folders and shorter
// or other files. Throws Error(io) with the system's reason when the file cannot be opened or
// read, so that an unreadable GGUF is not reported as some other format.
bool has_gguf_magic(const std::string& path);

class GgufFile {
 public:
  // Opens one file, or a whole split set when `path` names one of its parts.
  static GgufFile open(const std::string& path);
  // Parses one GGUF image already in memory (fuzzing, embedded data); split keys are not followed.
  // The views point into `data`, which must outlive the file object; `name` stands for the file in
  // error messages.
  static GgufFile from_memory(const void* data, uint64_t size, const std::string& name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;
  const GgufValue& require(const std::string& key) const;  // Error names key and file
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  std::string architecture() const;  // general.architecture

  const TensorTable& tensors() const { return tensors_; }
  const std::vector<std::string>& files() const { return file_paths_; }

 private:
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  TensorTable tensors_;
  std::vector<std::string> file_paths_;
  std::vector<std::shared_ptr<MappedFile>> maps_;
  friend class GgufParser;
};

}  // namespace tandem
