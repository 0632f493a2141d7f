#pragma once
// Whole small files (configs, tokenizer.json, templates, message lists) read into memory.
#include <cstdint>
#include <limits>
#include <string>

namespace tandem {

// The default cap: real tokenizer.json files are ~10 MB, configs and templates far less.
inline constexpr uint64_t default_max_read_bytes = uint64_t{256} << 20;

// Throws Error(io) naming the path when it cannot be opened or read or is not a regular file (a
// folder, /dev/zero, a FIFO, a socket), and Error(corrupt_file) when it is larger than
// `max_bytes` (checked before reading and while reading, so a growing file is cut off too).
std::string read_file_bytes(const std::string& path, uint64_t max_bytes = default_max_read_bytes);

}  // namespace tandem
