#pragma once
// While alive, files this process writes may not grow past `bytes` (RLIMIT_FSIZE): writes past it
// fail with EFBIG, as on a full disk, instead of raising SIGXFSZ. Tests use it to stand in for a
// disk that fills up.
#include <catch2/catch.hpp>
#include <sys/resource.h>

#include <csignal>

namespace tandem::test {

struct FileSizeLimit {
  rlimit saved{};
  void (*saved_handler)(int) = nullptr;
  explicit FileSizeLimit(rlim_t bytes) {
    saved_handler = std::signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &saved);
    rlimit limited = saved;
    limited.rlim_cur = bytes;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &limited) == 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, saved_handler);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
};

}  // namespace tandem::test
