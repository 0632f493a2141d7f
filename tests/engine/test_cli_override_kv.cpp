// The `--override-kv KEY=TYPE:VALUE` contract on the commands that read a model's config: accepted
// overrides change what is loaded; malformed specs, wrong types and unknown keys exit 1 with a
// message naming the problem.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "support/cli.hpp"
#include "support/fixtures.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

struct Result {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

Result run_both(const std::string& args) {
  const std::string command = test::shell_quote(test::cli_path()) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  Result r;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

TEST_CASE("--override-kv on inspect, eval, run and chat", "[engine][cli][override-kv]") {
  REQUIRE(fs::exists(test::cli_path()));
  const std::string gguf = test::shell_quote(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  const std::string hf = test::shell_quote(test::data_dir() + "/tiny-qwen3moe");

  SECTION("inspect shows the overridden value") {
    int status = 0;
    const std::string plain = test::run_cli("inspect --json " + gguf, status);
    REQUIRE(WEXITSTATUS(status) == 0);
    const auto before = nlohmann::json::parse(plain);
    const std::string out =
        test::run_cli("inspect --json " + gguf + " --override-kv qwen3moe.rope.freq_base=float:12345", status);
    REQUIRE(WEXITSTATUS(status) == 0);
    const auto after = nlohmann::json::parse(out);
    CHECK(after.dump().find("12345") != std::string::npos);
    CHECK(before.dump().find("12345") == std::string::npos);
  }

  SECTION("eval and run accept it, repeated") {
    const std::string logits = (fs::temp_directory_path() / "tandem-override-kv-logits.bin").string();
    Result r = run_both("eval -m " + gguf + " --ids 1,2,3 --logits-out " + test::shell_quote(logits) +
                        " --override-kv qwen3moe.rope.freq_base=float:1000000 --override-kv "
                        "qwen3moe.attention.layer_norm_rms_epsilon=float:1e-6");
    CHECK(r.exit_code == 0);
    fs::remove(logits);
    r = run_both("run -m " + gguf + " -p hi -n 2 --temp 0 --override-kv qwen3moe.rope.freq_base=float:1000000");
    CHECK(r.exit_code == 0);
  }

  SECTION("bad specs exit 1 with a clear message, on every command") {
    struct Case {
      const char* spec;
      const char* message;
    };
    const Case cases[] = {
        {"qwen3moe.rope.freq_base=float:abc", "'abc' is not a finite float"},
        {"qwen3moe.rope.freq_base", "no '='"},
        {"qwen3moe.rope.freq_base=float", "no ':'"},
        {"qwen3moe.rope.freq_base=double:1", "unknown type 'double'"},
        {"qwen3moe.rope.freq_base=int:1000000", "reads qwen3moe.rope.freq_base as float"},
        {"qwen3moe.no.such.key=int:1", "unknown override key qwen3moe.no.such.key"},
    };
    for (const auto& c : cases) {
      INFO(c.spec);
      const std::string flag = " --override-kv " + test::shell_quote(c.spec);
      for (const std::string& cmd :
           {"inspect " + gguf, "eval -m " + gguf + " --ids 1 --logits-out /dev/null", "run -m " + gguf + " -p hi -n 1",
            "chat -m " + gguf + " </dev/null"}) {
        INFO(cmd);
        const Result r = run_both(cmd + flag);
        CHECK(r.exit_code == 1);
        CHECK(r.out.find(c.message) != std::string::npos);
      }
    }
  }

  SECTION("HF folders say that it applies to GGUF metadata") {
    const Result r = run_both("inspect " + hf + " --override-kv qwen3moe.rope.freq_base=float:1000000");
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("applies to GGUF metadata") != std::string::npos);
  }
}
