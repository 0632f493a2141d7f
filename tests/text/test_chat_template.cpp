// Chat templates against HF apply_chat_template output: the real Qwen3 and DeepSeek-V3 templates
// (fixtures chat-golden.json), the tiny models' ChatML template (manifest chat example), the
// places ChatTemplate::load finds a template, and the `tandem template` CLI byte for byte.
#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out);
}

// A conversation as chat-golden.json stores it: messages, tools?, kwargs?, add_generation_prompt.
std::string render_conversation(const tandem::ChatTemplate& tmpl, const ordered_json& conversation) {
  tandem::ChatRequest request;
  request.ordered_messages = &conversation.at("messages");
  if (conversation.contains("tools")) request.ordered_tools = &conversation["tools"];
  if (conversation.contains("kwargs")) request.ordered_extra = &conversation["kwargs"];
  request.add_generation_prompt = conversation.value("add_generation_prompt", false);
  return tmpl.render(request);
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

using tandem::test::shell_quote;

using tandem::test::run_cli;

ordered_json tiny_chat_example() {
  auto manifest = ordered_json::parse(read_file(fs::path(tandem::test::data_dir()) / "tiny-manifest.json"));
  return manifest.at("tokenizer").at("chat_example");
}

}  // namespace

TEST_CASE("chat templates: Qwen3 and DeepSeek-V3 render chat-golden.json byte for byte", "[chat_template]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const fs::path tokenizers = fs::path(fx) / "tokenizers";
  auto golden = ordered_json::parse(read_file(tokenizers / "chat-golden.json"));
  size_t rendered = 0;
  for (const char* name : {"qwen3", "deepseek_v3"}) {
    auto tmpl = tandem::ChatTemplate::load((tokenizers / name).string());
    REQUIRE(tmpl);
    const auto& conversations = golden.at(name);
    REQUIRE(conversations.size() >= 6);
    for (size_t k = 0; k < conversations.size(); ++k) {
      INFO(name << " conversation " << k << ": " << conversations[k]["messages"].dump());
      CHECK(render_conversation(*tmpl, conversations[k]) ==
            conversations[k].at("rendered").get<std::string>());
      ++rendered;
    }
  }
  CHECK(rendered == 12);
}

TEST_CASE("chat templates: the tiny models' ChatML template renders the manifest chat example",
          "[chat_template]") {
  const ordered_json example = tiny_chat_example();
  const std::string expected = example.at("rendered").get<std::string>();
  tandem::ChatRequest request;
  request.ordered_messages = &example.at("messages");
  request.add_generation_prompt = true;  // the manifest's text ends with the assistant opening
  for (const char* model : {"tiny-qwen3moe", "tiny-deepseekv3", "tiny-qwen3moe/qwen3moe-q8_0.gguf",
                            "tiny-qwen3moe/chat_template.jinja"}) {
    INFO(model);
    auto tmpl = tandem::ChatTemplate::load((fs::path(tandem::test::data_dir()) / model).string());
    REQUIRE(tmpl);
    CHECK(tmpl->render(request) == expected);
  }
  // the plain nlohmann::json inputs work the same (key order only matters to tojson)
  const nlohmann::json messages = nlohmann::json::parse(example.at("messages").dump());
  tandem::ChatRequest plain;
  plain.messages = &messages;
  plain.add_generation_prompt = true;
  CHECK(tandem::ChatTemplate::load((fs::path(tandem::test::data_dir()) / "tiny-qwen3moe").string())
            ->render(plain) == expected);
}

TEST_CASE("chat templates: load finds tokenizer_config templates, named lists and special tokens",
          "[chat_template]") {
  TempDir dir("tandem-chat-template-load");
  const nlohmann::json messages = nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])");
  tandem::ChatRequest request;
  request.messages = &messages;

  SECTION("a list of named templates: apply_chat_template uses 'default'; AddedToken bos") {
    write_file(dir.path / "tokenizer_config.json", R"({
      "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
      "eos_token": "</s>",
      "chat_template": [
        {"name": "tool_use", "template": "wrong"},
        {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}"}
      ]})");
    auto tmpl = tandem::ChatTemplate::load(dir.path.string());
    REQUIRE(tmpl);
    CHECK(tmpl->render(request) == "<s>[hi]</s>");
    // the tokenizer_config.json path itself names the folder too
    CHECK(tandem::ChatTemplate::load((dir.path / "tokenizer_config.json").string())->render(request) ==
          "<s>[hi]</s>");
  }
  SECTION("chat_template.jinja wins over tokenizer_config.json, as in transformers") {
    write_file(dir.path / "tokenizer_config.json", R"({"bos_token": null, "chat_template": "old"})");
    write_file(dir.path / "chat_template.jinja", "{{ bos_token is defined }}|{{ messages[0].content }}\n");
    auto tmpl = tandem::ChatTemplate::load(dir.path.string());
    REQUIRE(tmpl);
    CHECK(tmpl->render(request) == "False|hi");  // one trailing newline dropped, as jinja2 does
  }
  SECTION("no template anywhere: nullptr; a bad template: an error naming the file") {
    write_file(dir.path / "tokenizer_config.json", R"({"eos_token": "</s>"})");
    CHECK(tandem::ChatTemplate::load(dir.path.string()) == nullptr);
    write_file(dir.path / "chat_template.jinja", "{% if x %}never closed");
    try {
      tandem::ChatTemplate::load(dir.path.string());
      FAIL("no error");
    } catch (const tandem::Error& e) {
      CHECK_THAT(e.what(), Catch::Matchers::Contains("chat_template.jinja") &&
                               Catch::Matchers::Contains("unclosed block 'if'"));
    }
  }
  SECTION("a missing path is an io error") {
    CHECK_THROWS_AS(tandem::ChatTemplate::load((dir.path / "nope").string()), tandem::Error);
  }
}

TEST_CASE("tandem template prints the rendered text exactly", "[chat_template][cli]") {
  if (tandem::test::cli_path().empty()) {
    WARN("skipped: the tandem CLI is not built");
    return;
  }
  TempDir dir("tandem-template-cli");
  int status = 0;

  SECTION("tiny model folder and GGUF, manifest chat example") {
    const ordered_json example = tiny_chat_example();
    write_file(dir.path / "messages.json", example.at("messages").dump());
    for (const char* model : {"tiny-qwen3moe", "tiny-qwen3moe/qwen3moe-q8_0.gguf"}) {
      const std::string out = run_cli(
          "template -m " + shell_quote((fs::path(tandem::test::data_dir()) / model).string()) +
              " --messages " + shell_quote((dir.path / "messages.json").string()) + " --generation-prompt",
          status);
      CHECK(status == 0);
      CHECK(out == example.at("rendered").get<std::string>());
    }
  }
  SECTION("chat-golden conversations with tools and kwargs") {
    TANDEM_REQUIRE_FIXTURES(fx);
    const fs::path tokenizers = fs::path(fx) / "tokenizers";
    auto golden = ordered_json::parse(read_file(tokenizers / "chat-golden.json"));
    size_t checked = 0;
    for (const char* name : {"qwen3", "deepseek_v3"})
      for (const auto& conversation : golden.at(name)) {
        if (!conversation.contains("tools") && !conversation.contains("kwargs")) continue;
        // non-ASCII written raw, key order kept: what a user's file would hold
        write_file(dir.path / "messages.json", conversation.at("messages").dump(2, ' ', false));
        std::string args = "template -m " + shell_quote((tokenizers / name).string()) + " --messages " +
                           shell_quote((dir.path / "messages.json").string());
        if (conversation.contains("tools")) {
          write_file(dir.path / "tools.json", conversation["tools"].dump());
          args += " --tools " + shell_quote((dir.path / "tools.json").string());
        }
        if (conversation.contains("kwargs"))
          args += " --kwargs " + shell_quote(conversation["kwargs"].dump());
        if (conversation.value("add_generation_prompt", false)) args += " --generation-prompt";
        INFO(args);
        const std::string out = run_cli(args, status);
        CHECK(status == 0);
        CHECK(out == conversation.at("rendered").get<std::string>());
        ++checked;
      }
    CHECK(checked == 4);
  }
  SECTION("errors go to stderr with exit status 1 and nothing on stdout") {
    write_file(dir.path / "messages.json", "not json");
    const std::string out = run_cli(
        "template -m " + shell_quote((fs::path(tandem::test::data_dir()) / "tiny-qwen3moe").string()) +
            " --messages " + shell_quote((dir.path / "messages.json").string()),
        status);
    CHECK(out.empty());
    CHECK(WEXITSTATUS(status) == 1);
  }
}
