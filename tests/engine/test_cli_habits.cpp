// CLI habits (issue 14): flags a careful user would not mean are refused with the flag's name; a
// flag given twice takes its last value; llama.cpp spellings run; speed lines count decode steps;
// a failed tokenizer is reported with its cause. Runs the bundled trained model.
#include <stdlib.h>
#include <unistd.h>

#include <signal.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tandem/engine/placement.hpp"
#include "support/cli.hpp"
#include "support/fixtures.hpp"

namespace {

using tandem::test::run_cli_captured;
using tandem::test::shell_quote;

std::string bundled() { return shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf"); }
std::string tiny_folder() { return tandem::test::data_dir() + "/tiny-qwen3moe"; }

// `run --ids` with the bundled model's first reference prompt.
std::string run_ids(const std::string& extra) {
  return "run -m " + bundled() + " --ids 322,2102,1195,2609,325 --print-ids --temp 0 " + extra;
}

size_t count_words(const std::string& line) {
  std::istringstream in(line);
  size_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char pattern[] = "/tmp/tandem-habits-XXXXXX";
    path = mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return (path / name).string();
  }
};

}  // namespace

TEST_CASE("cli habits: values a user would not mean are refused, naming the flag", "[cli][habits]") {
  const struct {
    const char* flags;
    const char* names;
  } cases[] = {
      {"-n -2", "-n/--max-tokens"},     {"-t -5", "-t/--threads"},  {"--temp 1e30", "--temp"},
      {"--temp nan", "--temp"},         {"--top-p 1.5", "--top-p"}, {"--min-p -1", "--min-p"},
      {"--repeat-penalty 0", "--repeat-penalty"}, {"-c -1", "-c/--ctx"},
  };
  for (const auto& c : cases) {
    INFO(c.flags);
    const auto r = run_cli_captured(run_ids(c.flags));
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(c.names) != std::string::npos);
    CHECK(r.out.empty());
  }
}

TEST_CASE("cli habits: a flag given twice takes the last value, as llama.cpp does", "[cli][habits]") {
  const auto r = run_cli_captured(run_ids("-n 3 -n 5"));
  REQUIRE(r.exit_code == 0);
  CHECK(count_words(r.out) == 5);
  const auto predict = run_cli_captured(run_ids("--n-predict 4"));
  REQUIRE(predict.exit_code == 0);
  CHECK(count_words(predict.out) == 4);
  // --n-predict and -n are one flag: the five ids are the first five of the four-plus-one.
  CHECK(r.out.rfind(predict.out.substr(0, predict.out.size() - 1), 0) == 0);
}

TEST_CASE("cli habits: llama.cpp's offload and cache flags run, with a note saying what to use", "[cli][habits]") {
  const auto plain = run_cli_captured(run_ids("-n 4"));
  const auto r = run_cli_captured(run_ids("-n 4 -ngl 99 -ctk q8_0 -ctv q8_0 -fa --no-mmap --mlock"));
  REQUIRE(plain.exit_code == 0);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == plain.out);
  // Without a GPU, -ngl says the layers stay on the CPU and names the rules to use instead.
  CHECK((r.err.find("--placement") != std::string::npos || tandem::cuda_forward_available()));
  CHECK(r.err.find("-ctk/-ctv") != std::string::npos);
  CHECK(r.err.find("q8_0/q8_0 are not used: the KV cache is f16") != std::string::npos);
  CHECK(r.err.find("--no-mmap") != std::string::npos);
  CHECK(r.err.find("--mlock") != std::string::npos);
  CHECK(r.err.find("-fa/--flash-attn") != std::string::npos);
  CHECK(r.err.find("At Most") == std::string::npos);
}

TEST_CASE("cli habits: --kv-type, and -ctk/-ctv naming one supported type, choose the KV cache type", "[cli][habits][kv]") {
  const auto f32 = run_cli_captured(run_ids("-n 6 --kv-type f32"));
  const auto ctk = run_cli_captured(run_ids("-n 6 -ctk f32 -ctv f32"));
  const auto bf16 = run_cli_captured(run_ids("-n 6 --cache-type-k=bf16 --cache-type-v bf16"));
  REQUIRE(f32.exit_code == 0);
  REQUIRE(ctk.exit_code == 0);
  REQUIRE(bf16.exit_code == 0);
  CHECK(ctk.out == f32.out);
  CHECK(ctk.err.find("-ctk/-ctv") == std::string::npos);  // used, so no note
  CHECK(bf16.err.find("-ctk/-ctv") == std::string::npos);
  // K and V differing, or one of them only: the note says what is used.
  const auto mixed = run_cli_captured(run_ids("-n 2 -ctk f16 -ctv f32"));
  REQUIRE(mixed.exit_code == 0);
  CHECK(mixed.err.find("f16/f32 are not used: the KV cache is f16") != std::string::npos);
  // --kv-type wins over -ctk/-ctv.
  const auto both = run_cli_captured(run_ids("-n 2 --kv-type bf16 -ctk f32 -ctv f32"));
  REQUIRE(both.exit_code == 0);
  CHECK(both.err.find("the KV cache is bf16") != std::string::npos);
  const auto bad = run_cli_captured(run_ids("-n 2 --kv-type q4_0"));
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("--kv-type must be f32, f16, bf16, fp8, int8 or int4, not 'q4_0'") != std::string::npos);
  CHECK(bad.err.find("int4:32, the default, or int4:64") != std::string::npos);
  // int4's group size spelt out: int4:32 is int4; int4:64 runs (groups of 64 values).
  const auto int4 = run_cli_captured(run_ids("-n 4 --kv-type int4"));
  const auto int4_32 = run_cli_captured(run_ids("-n 4 --kv-type int4:32"));
  const auto int4_64 = run_cli_captured(run_ids("-n 4 --kv-type int4:64"));
  REQUIRE(int4.exit_code == 0);
  REQUIRE(int4_32.exit_code == 0);
  REQUIRE(int4_64.exit_code == 0);
  CHECK(int4_32.out == int4.out);
  CHECK_FALSE(int4_64.out.empty());
  const auto bad_group = run_cli_captured(run_ids("-n 2 --kv-type int4:16"));
  CHECK(bad_group.exit_code != 0);
  CHECK(bad_group.err.find("not 'int4:16'") != std::string::npos);
}

TEST_CASE("cli habits: -s seeds sampling; -s -1 is random", "[cli][habits]") {
  const std::string sampled = "run -m " + bundled() + " --ids 322,2102 --print-ids -n 12 --temp 1.5 --top-k 0 --top-p 1 --min-p 0 ";
  const auto a = run_cli_captured(sampled + "-s 7");
  const auto b = run_cli_captured(sampled + "--seed 7");
  REQUIRE(a.exit_code == 0);
  CHECK(a.out == b.out);
  CHECK(run_cli_captured(sampled + "-s -1").exit_code == 0);
}

TEST_CASE("cli habits: -f reads the prompt from a file; -p \"\" says why it cannot run", "[cli][habits]") {
  TempDir dir;
  const std::string prompt = "def read_config(path):\n";
  const std::string file = dir.write("prompt.txt", prompt);
  const std::string base = "run -m " + bundled() + " -n 8 --temp 0 ";
  const auto from_file = run_cli_captured(base + "-f " + shell_quote(file));
  const auto from_flag = run_cli_captured(base + "-p " + shell_quote(prompt));
  REQUIRE(from_file.exit_code == 0);
  CHECK(from_file.out == from_flag.out);
  CHECK_FALSE(from_file.out.empty());

  const auto empty = run_cli_captured(base + "-p ''");
  CHECK(empty.exit_code == 1);
  CHECK(empty.err.find("prompt is empty") != std::string::npos);
  const auto both = run_cli_captured(base + "-p x -f " + shell_quote(file));
  CHECK(both.exit_code == 1);
  CHECK(both.err.find("not both") != std::string::npos);
  const auto device = run_cli_captured(base + "-f /dev/zero");
  CHECK(device.exit_code == 1);
  CHECK(device.err.find("/dev/zero") != std::string::npos);
}

TEST_CASE("cli habits: --stats prints load time and counts decode steps, not tokens", "[cli][habits]") {
  const auto r = run_cli_captured(run_ids("-n 6 --stats"));
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("[load ") != std::string::npos);
  CHECK(r.err.find("generated 6 tokens, ") != std::string::npos);
  CHECK(r.err.find("stop: max_tokens") != std::string::npos);
  // One new token comes from the prefill's logits: there is no decode step to time.
  const auto one = run_cli_captured(run_ids("-n 1 -v"));
  REQUIRE(one.exit_code == 0);
  CHECK(one.err.find("generated 1 tokens, no decode step") != std::string::npos);
  // Without --stats and with stderr not a terminal, no speed line.
  CHECK(run_cli_captured(run_ids("-n 2")).err.find("[load ") == std::string::npos);
}

TEST_CASE("cli habits: --chat-template takes Jinja text or a file, and refuses built-in names", "[cli][habits]") {
  TempDir dir;
  const std::string tmpl = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}";
  const std::string file = dir.write("t.jinja", tmpl);
  const std::string base = "run -m " + bundled() + " -n 3 --temp 0 --chat -p hello ";
  const auto inline_text = run_cli_captured(base + "--chat-template " + shell_quote(tmpl));
  const auto from_file = run_cli_captured(base + "--chat-template-file " + shell_quote(file));
  REQUIRE(inline_text.exit_code == 0);
  CHECK(inline_text.out == from_file.out);
  // The same prompt through the plain path renders to the same text, so the same continuation.
  const auto plain = run_cli_captured("run -m " + bundled() + " -n 3 --temp 0 -p '<<hello>>'");
  REQUIRE(plain.exit_code == 0);
  CHECK(inline_text.out == plain.out);

  const auto named = run_cli_captured(base + "--chat-template chatml");
  CHECK(named.exit_code == 1);
  CHECK(named.err.find("built-in template names") != std::string::npos);
}

TEST_CASE("cli habits: a tokenizer that fails to load is reported with its cause", "[cli][habits]") {
  TempDir dir;
  for (const auto& entry : std::filesystem::directory_iterator(tiny_folder()))
    std::filesystem::copy_file(entry.path(), dir.path / entry.path().filename());
  dir.write("tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
  const auto r = run_cli_captured("run -m " + shell_quote(dir.path.string()) + " -p hi -n 2");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("cannot load the model's tokenizer") != std::string::npos);
  CHECK(r.err.find("ships no tokenizer") == std::string::npos);
}

TEST_CASE("cli habits: a context past the model's trained one is a warning", "[cli][habits]") {
  // The bundled model was trained at 4096 tokens.
  const auto past = run_cli_captured(run_ids("-n 2 -c 8192"));
  REQUIRE(past.exit_code == 0);
  CHECK(past.err.find("-c/--ctx (8192 tokens) is longer than the model's trained context (4096 tokens)") !=
        std::string::npos);
  const auto within = run_cli_captured(run_ids("-n 2 -c 4096"));
  REQUIRE(within.exit_code == 0);
  CHECK(within.err.find("trained context") == std::string::npos);
}

TEST_CASE("cli habits: Ctrl-C in run prints the statistics with stop reason cancelled", "[cli][habits]") {
  int err_pipe[2];
  REQUIRE(pipe(err_pipe) == 0);
  const std::string cli = tandem::test::cli_path();
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(err_pipe[1], STDERR_FILENO);
    close(err_pipe[0]);
    close(err_pipe[1]);
    if (FILE* null = std::fopen("/dev/null", "w")) dup2(fileno(null), STDOUT_FILENO);
    execl(cli.c_str(), cli.c_str(), "run", "-m", model.c_str(), "--ids", "1,2,3", "-n", "-1", "--ignore-eos",
          "-c", "1000000", "--stats", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(err_pipe[1]);
  std::string err;
  char buffer[4096];
  // Wait until loading is over (the context warning is printed after load), then interrupt.
  while (err.find("trained context") == std::string::npos) {
    const ssize_t n = read(err_pipe[0], buffer, sizeof buffer);
    if (n <= 0) break;
    err.append(buffer, static_cast<size_t>(n));
  }
  usleep(300 * 1000);
  kill(pid, SIGINT);
  for (ssize_t n; (n = read(err_pipe[0], buffer, sizeof buffer)) > 0;) err.append(buffer, static_cast<size_t>(n));
  close(err_pipe[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  CHECK(err.find("stop: cancelled]") != std::string::npos);
}
