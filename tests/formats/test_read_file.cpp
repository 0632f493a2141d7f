// read_file_bytes on hostile paths: devices, folders and FIFOs are refused by name instead of
// read forever (or blocked on), and sizes past the cap are refused.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "tandem/error.hpp"
#include "tandem/formats/read_file.hpp"

namespace {

namespace fs = std::filesystem;

std::string error_of(const std::string& path, uint64_t max_bytes = tandem::default_max_read_bytes) {
  try {
    (void)tandem::read_file_bytes(path, max_bytes);
  } catch (const tandem::Error& e) {
    CHECK(e.kind() != tandem::ErrorKind::internal);
    return e.what();
  }
  FAIL("no error reading " << path);
  return {};
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("tandem_read_file_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("read_file_bytes refuses what is not a regular file, naming the path", "[read_file]") {
  using Catch::Matchers::Contains;
  CHECK_THAT(error_of("/dev/zero"), Contains("/dev/zero") && Contains("not a regular file"));
  CHECK_THAT(error_of("/dev/zero", 1024), Contains("/dev/zero") && Contains("character device"));
  TempDir dir;
  CHECK_THAT(error_of(dir.path.string()), Contains(dir.path.string()) && Contains("folder"));
  const fs::path fifo = dir.path / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // no writer: opening it for reading would block forever
  CHECK_THAT(error_of(fifo.string()), Contains(fifo.string()) && Contains("FIFO"));
  CHECK_THAT(error_of((dir.path / "missing.json").string()),
             Contains("missing.json") && Contains("No such file"));
}

TEST_CASE("read_file_bytes reads regular files whole and refuses ones past the cap", "[read_file]") {
  using Catch::Matchers::Contains;
  TempDir dir;
  const fs::path file = dir.path / "data.bin";
  std::string content(200000, '\0');
  for (size_t k = 0; k < content.size(); ++k) content[k] = static_cast<char>(k * 7);
  std::ofstream(file, std::ios::binary).write(content.data(), static_cast<std::streamsize>(content.size()));
  CHECK(tandem::read_file_bytes(file.string()) == content);
  CHECK(tandem::read_file_bytes(file.string(), content.size()) == content);
  CHECK_THAT(error_of(file.string(), content.size() - 1), Contains("data.bin") && Contains("more than the 199999"));
  const fs::path empty = dir.path / "empty";
  std::ofstream(empty.string()).close();
  CHECK(tandem::read_file_bytes(empty.string()).empty());
  CHECK(tandem::default_max_read_bytes == (uint64_t{256} << 20));
}
