#include "tandem/formats/read_file.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tandem/error.hpp"

namespace tandem {

std::string read_file_bytes(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(ErrorKind::io, path + ": is a folder, not a file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(ErrorKind::io, path + ": cannot read: " + ec.message());
  if (size > max_bytes)
    throw Error(ErrorKind::corrupt_file,
                path + ": " + std::to_string(size) + " bytes is more than the " + std::to_string(max_bytes) +
                    " this file may have");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::io, path + ": cannot open: " + std::strerror(errno));
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) throw Error(ErrorKind::io, path + ": cannot read");
  return data.str();
}

}  // namespace tandem
