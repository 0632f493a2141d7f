#pragma once
// Byte-level edits of real files for the model tests: damage one metadata value of a converter's
// GGUF in place, write it to a scratch folder.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace tandem::test {

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A fresh folder under the system temp folder, unique to this process.
inline std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("tandem-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Overwrites the u32 value of metadata key `key` (found by its length-prefixed name).
inline void patch_gguf_u32(std::vector<uint8_t>& bytes, const std::string& key, uint32_t value) {
  const uint64_t len = key.size();
  std::vector<uint8_t> needle(reinterpret_cast<const uint8_t*>(&len),
                              reinterpret_cast<const uint8_t*>(&len) + 8);
  needle.insert(needle.end(), key.begin(), key.end());
  const auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  REQUIRE(it != bytes.end());
  const size_t at = static_cast<size_t>(it - bytes.begin()) + needle.size();
  uint32_t type = 0;
  std::memcpy(&type, bytes.data() + at, 4);
  REQUIRE(type == 4);  // u32
  std::memcpy(bytes.data() + at + 4, &value, 4);
}

}  // namespace tandem::test
