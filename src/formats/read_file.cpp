#include "tandem/formats/read_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tandem/error.hpp"

namespace tandem {

namespace {

std::string os_error(int error) { return std::strerror(error); }

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a pipe (FIFO)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};

}  // namespace

std::string read_file_bytes(const std::string& path, uint64_t max_bytes) {
  // stat before open: opening a FIFO for reading would block until a writer appears
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) throw Error(ErrorKind::io, path + ": cannot read: " + os_error(errno));
  if (!S_ISREG(info.st_mode))
    throw Error(ErrorKind::io, path + ": is " + file_kind(info.st_mode) + ", not a regular file");
  // O_NONBLOCK: should the path be swapped for a FIFO after the stat, open still returns
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorKind::io, path + ": cannot open: " + os_error(errno));
  Fd guard{fd};
  if (::fstat(fd, &info) != 0) throw Error(ErrorKind::io, path + ": cannot read: " + os_error(errno));
  if (!S_ISREG(info.st_mode))
    throw Error(ErrorKind::io, path + ": is " + file_kind(info.st_mode) + ", not a regular file");
  const auto too_large = [&](uint64_t size) {
    return Error(ErrorKind::corrupt_file, path + ": " + std::to_string(size) + " bytes or more is more than the " +
                                              std::to_string(max_bytes) + " this file may have");
  };
  const auto size = static_cast<uint64_t>(info.st_size);
  if (size > max_bytes) throw too_large(size);
  std::string data;
  data.resize(static_cast<size_t>(size));
  size_t used = 0;
  for (;;) {  // the file may grow while we read: never past max_bytes
    if (used == data.size()) {
      if (used >= max_bytes) {
        char probe = 0;
        ssize_t extra = ::read(fd, &probe, 1);
        if (extra > 0) throw too_large(static_cast<uint64_t>(used) + 1);
        if (extra == 0) break;
        if (errno == EINTR) continue;
        throw Error(ErrorKind::io, path + ": cannot read: " + os_error(errno));
      }
      data.resize(static_cast<size_t>(std::min<uint64_t>(max_bytes, static_cast<uint64_t>(used) + 65536)));
    }
    ssize_t got = ::read(fd, data.data() + used, data.size() - used);
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::io, path + ": cannot read: " + os_error(errno));
    }
    used += static_cast<size_t>(got);
  }
  data.resize(used);
  return data;
}

}  // namespace tandem
