// open_model_files on damaged or unreadable inputs: errors that say what is wrong, and special
// token ids outside the vocabulary dropped with a warning rather than used.
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
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

bool has_warning(const ModelFiles& files, const std::string& text) {
  return std::any_of(files.warnings.begin(), files.warnings.end(),
                     [&](const std::string& w) { return w.find(text) != std::string::npos; });
}

}  // namespace

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

TEST_CASE("a model behind a folder we may not search is reported with the system's reason",
          "[model][files][errors]") {
  if (::geteuid() == 0) {
    WARN("skipped: root may search any folder");
    return;
  }
  const fs::path dir = test::scratch_dir("unsearchable");
  fs::create_directories(dir / "locked");
  std::ofstream(dir / "locked" / "model.gguf") << "GGUF";
  fs::permissions(dir / "locked", fs::perms::none);
  const std::string path = (dir / "locked" / "model.gguf").string();
  try {
    open_model_files(path);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::io);
    CHECK_THAT(e.what(), Catch::Contains(path + ": cannot access: Permission denied"));
  }
  fs::permissions(dir / "locked", fs::perms::owner_all);
  fs::remove_all(dir);
}

TEST_CASE("BOS / EOS ids outside the vocabulary are dropped with a warning", "[model][files][config]") {
  const fs::path dir = test::scratch_dir("special-ids");
  const std::string tiny = test::data_dir() + "/tiny-qwen3moe";

  SECTION("GGUF") {
    auto bytes = test::read_bytes(tiny + "/qwen3moe-q8_0.gguf");
    test::patch_gguf_u32(bytes, "tokenizer.ggml.eos_token_id", 100000);
    const std::string path = (dir / "bad-eos.gguf").string();
    test::write_bytes(path, bytes);
    const ModelFiles files = open_model_files(path);
    CHECK(files.config.eos_token_ids.empty());
    CHECK(has_warning(files,
                      path + ": EOS token id 100000 is outside the vocabulary of 512 tokens; ignoring it"));
    CHECK_NOTHROW(bind_weights(files));  // the model stays usable
    // ... and so do its tokenizer and chat template, without the bad id
    const auto tokenizer = Tokenizer::from_gguf(*files.gguf);
    CHECK(tokenizer->eos_id() == -1);
    CHECK_FALSE(tokenizer->encode("hello", false).empty());
    CHECK_NOTHROW(ChatTemplate::load(path));
  }
  SECTION("HF config.json and generation_config.json") {
    std::string config = test::read_text(tiny + "/config.json");
    const auto at = config.find("\"bos_token_id\": null");
    REQUIRE(at != std::string::npos);
    config.replace(at, std::strlen("\"bos_token_id\": null"), "\"bos_token_id\": 512");
    std::ofstream(dir / "config.json") << config;
    std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [7, -3, 70000]})";
    fs::create_symlink(fs::absolute(tiny + "/model.safetensors"), dir / "model.safetensors");
    const ModelFiles files = open_model_files(dir.string());
    CHECK(files.config.bos_token_id == -1);
    CHECK(files.config.eos_token_ids == std::vector<int64_t>{7});
    CHECK(
        has_warning(files, (dir / "config.json").string() + ": BOS token id 512 is outside the vocabulary"));
    CHECK(has_warning(files, (dir / "generation_config.json").string() + ": EOS token id -3 is outside"));
    CHECK(has_warning(files, "EOS token id 70000 is outside the vocabulary of 512 tokens"));
  }
  fs::remove_all(dir);
}
