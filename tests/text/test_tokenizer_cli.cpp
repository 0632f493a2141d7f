// The `tandem tokenize` output contract: one JSON array of ids and a newline, compared with the
// manifest's HF ids (tiny model) for a folder, a GGUF, --text and --file.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli.hpp"
#include "support/fixtures.hpp"

namespace {

using tandem::test::shell_quote;

std::string run(const std::string& args, int& status) { return tandem::test::run_cli(args, status); }

}  // namespace

TEST_CASE("tandem tokenize prints the ids as a JSON array", "[tokenizer][cli]") {
  if (tandem::test::cli_path().empty()) {
    WARN("skipped: the tandem CLI is not built");
    return;
  }
  const std::string dir = tandem::test::data_dir();
  std::ifstream manifest_in(dir + "/tiny-manifest.json");
  const auto manifest = nlohmann::json::parse(manifest_in);
  const auto& prompt = manifest.at("tokenizer").at("prompts").at(1);
  const std::string text = prompt.at("text");
  const std::string expected = prompt.at("ids").dump() + "\n";

  int status = -1;
  CHECK(run("tokenize -m " + shell_quote(dir + "/tiny-qwen3moe") + " --text " + shell_quote(text), status) ==
        expected);
  CHECK(status == 0);
  CHECK(run("tokenize -m " + shell_quote(dir + "/tiny-deepseekv3/deepseekv3-q8_0.gguf") +
                " --no-special --text " + shell_quote(text),
            status) == expected);
  CHECK(status == 0);

  const std::string file = (std::filesystem::temp_directory_path() / "tandem_tokenize_cli.txt").string();
  std::ofstream(file, std::ios::binary) << text;
  CHECK(run("tokenize -m " + shell_quote(dir + "/tiny-qwen3moe/tokenizer.json") + " --file " + shell_quote(file),
            status) == expected);
  CHECK(status == 0);
  std::remove(file.c_str());

  run("tokenize -m /nonexistent --text hi", status);
  CHECK(status != 0);
  run("tokenize -m " + shell_quote(dir + "/tiny-qwen3moe") + " --text a --file b", status);
  CHECK(status != 0);
}

TEST_CASE("tandem template refuses --tools that is not an array and deep JSON without crashing",
          "[chat_template][cli]") {
  if (tandem::test::cli_path().empty()) {
    WARN("skipped: the tandem CLI is not built");
    return;
  }
  const std::string model = shell_quote(tandem::test::data_dir() + "/tiny-qwen3moe");
  const auto dir = std::filesystem::temp_directory_path() / "tandem-template-cli";
  std::filesystem::create_directories(dir);
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return shell_quote((dir / name).string());
  };
  const std::string messages = write("messages.json", R"([{"role": "user", "content": "hi"}])");
  const std::string tools_object = write("tools.json", R"({"type": "function", "function": {"name": "f"}})");
  const std::string deep = write("deep.json", "{\"messages\": [" + std::string(20000, '[') +
                                                  std::string(20000, ']') + "]}");

  const auto bad_tools = tandem::test::run_cli_captured("template -m " + model + " --messages " + messages +
                                                        " --tools " + tools_object);
  CHECK(bad_tools.exit_code == 1);
  CHECK(bad_tools.err.find("expected a JSON array of tool schemas") != std::string::npos);

  const auto deep_run = tandem::test::run_cli_captured("template -m " + model + " --messages " + deep);
  CHECK(deep_run.exit_code == 1);
  CHECK(deep_run.err.find("deeper than 256") != std::string::npos);
  std::filesystem::remove_all(dir);
}
