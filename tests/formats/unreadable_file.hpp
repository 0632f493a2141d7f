#pragma once
// A regular file this process cannot open for reading. chmod 000 does not stop root, so as root we
// use a write-only sysctl file, which procfs refuses to read even to root.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace tandem::test {

// `scratch` is a folder the test owns; empty when no unreadable file can be had here.
inline std::optional<std::string> unreadable_file(const std::filesystem::path& scratch) {
  std::string path;
  if (::geteuid() != 0) {
    path = (scratch / "unreadable.gguf").string();
    std::ofstream(path) << "GGUF";
    ::chmod(path.c_str(), 0);
  } else {
    path = "/proc/sys/vm/drop_caches";
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::close(fd);
    return std::nullopt;
  }
  if (errno != EACCES) return std::nullopt;
  return path;
}

}  // namespace tandem::test
