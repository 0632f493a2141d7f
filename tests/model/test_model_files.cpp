// open_model_files on damaged or unreadable inputs: errors that say what is wrong.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "formats/unreadable_file.hpp"
#include "model/gguf_patch.hpp"
#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"

using namespace tandem;
namespace fs = std::filesystem;

TEST_CASE("an unreadable model file is reported with the system's reason", "[model][files][errors]") {
  const fs::path dir = test::scratch_dir("unreadable");
  const auto unreadable = test::unreadable_file(dir);
  if (!unreadable) {
    WARN("skipped: no file here that this user cannot read");
    return;
  }
  try {
    open_model_files(*unreadable);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::io);
    CHECK_THAT(e.what(), Catch::Contains(*unreadable + ": cannot open: Permission denied"));
    CHECK_THAT(e.what(), !Catch::Contains("not a GGUF file"));
  }
  fs::remove_all(dir);
}
