#include "tandem/formats/tensor_table.hpp"

#include "tandem/error.hpp"

namespace tandem {

void TensorTable::add(TensorEntry entry) {
  if (index_.count(entry.name)) {
    throw Error(ErrorKind::corrupt_file, entry.file + ": duplicate tensor name '" + entry.name + "'");
  }
  index_.emplace(entry.name, entries_.size());
  entries_.push_back(std::move(entry));
}

const TensorEntry* TensorTable::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const TensorEntry& TensorTable::require(std::string_view name) const {
  if (const TensorEntry* e = find(name)) return *e;
  throw Error(ErrorKind::corrupt_file, "tensor '" + std::string(name) + "' not found");
}

}  // namespace tandem
