#pragma once
// Whole small files (configs, tokenizer.json, templates, message lists) read into memory.
#include <cstdint>
#include <limits>
#include <string>

namespace tandem {

// Throws Error(io) naming the path when it cannot be opened or read, and Error(corrupt_file) when it
// is larger than `max_bytes`.
std::string read_file_bytes(const std::string& path,
                            uint64_t max_bytes = std::numeric_limits<uint64_t>::max());

}  // namespace tandem
