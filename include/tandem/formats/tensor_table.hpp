#pragma once
// The output of every format reader: named tensors in their stored type, viewing mapped bytes.
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tandem/tensor/tensor_view.hpp"

namespace tandem {

struct TensorEntry {
  std::string name;
  TensorView view;
  std::string file;  // the file (shard, split) the bytes live in, for error messages
};

class TensorTable {
 public:
  void add(TensorEntry entry);  // throws Error(corrupt_file) on a duplicate name
  const TensorEntry* find(std::string_view name) const;
  const TensorEntry& require(std::string_view name) const;  // throws Error naming the tensor
  const std::vector<TensorEntry>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

 private:
  std::vector<TensorEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace tandem
