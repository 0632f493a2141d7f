#pragma once
// safetensors reader: one file, or a sharded set via model.safetensors.index.json; zero-copy
// views over mmapped shards.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tandem/formats/mapped_file.hpp"
#include "tandem/formats/tensor_table.hpp"

namespace tandem {

class SafetensorsModel {
 public:
  // `path`: a .safetensors file, an index .json, or a folder holding either.
  static SafetensorsModel open(const std::string& path);
  // Parses one safetensors image already in memory (fuzzing, embedded data). The views point into
  // `data`, which must outlive the model; `name` stands for the file in error messages.
  static SafetensorsModel from_memory(const void* data, uint64_t size, const std::string& name);

  const TensorTable& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__
  const std::vector<std::string>& files() const { return file_paths_; }

 private:
  TensorTable tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::string> file_paths_;
  std::vector<std::shared_ptr<MappedFile>> maps_;
  friend class SafetensorsParser;
};

}  // namespace tandem
