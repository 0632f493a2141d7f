#pragma once
// Streaming GGUF v3 writer: metadata and tensor infos are gathered first (they are small), then
// write() emits the header and asks a callback for each tensor's bytes in turn, so a file of
// hundreds of GB is written in constant memory. The reader is gguf.hpp.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "tandem/formats/gguf.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem {

// GGUF's tensor type id (ggml_type) for `type`; Error(unsupported) for one GGUF cannot store.
uint32_t gguf_type_id(DType type);

class GgufWriter {
 public:
  struct TensorInfo {
    std::string name;
    DType dtype = DType::f32;
    std::vector<int64_t> dims;  // outermost first, as TensorView::shape (GGUF stores them reversed)
    uint64_t offset = 0;        // from the start of the data section, aligned
    uint64_t nbytes = 0;
  };

  // Receives one tensor's bytes from the fill callback, in as many pieces as it likes.
  class DataSink {
   public:
    void write(const void* data, size_t bytes);
    uint64_t remaining() const { return remaining_; }

   private:
    friend class GgufWriter;
    DataSink(std::FILE* file, const std::string& path, const std::string& tensor, uint64_t bytes)
        : file_(file), path_(path), tensor_(tensor), remaining_(bytes) {}
    std::FILE* file_;
    const std::string& path_;
    const std::string& tensor_;
    uint64_t remaining_;
  };
  using FillTensor = std::function<void(const TensorInfo& tensor, DataSink& sink)>;

  // `alignment`: a power of two; other than 32 it is recorded as general.alignment.
  explicit GgufWriter(uint64_t alignment = 32);

  // Any value (nested arrays too). Error(invalid_argument) for a key set twice.
  void set(const std::string& key, GgufValue value);
  void set_u8(const std::string& key, uint8_t v);
  void set_i8(const std::string& key, int8_t v);
  void set_u16(const std::string& key, uint16_t v);
  void set_i16(const std::string& key, int16_t v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_i64(const std::string& key, int64_t v);
  void set_f32(const std::string& key, float v);
  void set_f64(const std::string& key, double v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, std::string v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  // Stored compactly (GgufArray's string_bytes/string_ends), as the reader keeps vocabularies.
  void set_string_array(const std::string& key, const std::vector<std::string>& v);

  // Appends a tensor; Error(invalid_argument) for a repeated name, a rank outside 1..4, a
  // non-positive dimension or rows that are not whole blocks of `dtype`.
  const TensorInfo& add_tensor(const std::string& name, DType dtype, std::vector<int64_t> dims);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_bytes() const;  // the size write() will produce

  // Writes the file: header, metadata, tensor infos, then each tensor's bytes from `fill` (which
  // must write exactly TensorInfo::nbytes), padded to the alignment. Error(io) naming the path
  // when it cannot be created or written (a partial file is removed); Error(internal) when `fill`
  // writes too few or too many bytes.
  void write(const std::string& path, const FillTensor& fill) const;

 private:
  uint64_t header_bytes() const;

  uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<TensorInfo> tensors_;
  uint64_t data_bytes_ = 0;
};

}  // namespace tandem
