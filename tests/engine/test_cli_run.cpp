// `tandem run` contracts against HF's greedy continuations (tests/data/tiny-manifest.json):
// --ids … --print-ids prints exactly the greedy ids; -p prints exactly HF's decode of them.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/fixtures.hpp"

namespace {

struct Captured {
  int exit_code = -1;
  std::string out;
};

// Runs the CLI with `args` (no shell), stdout captured, stderr discarded.
Captured run_cli(const std::vector<std::string>& args) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    if (FILE* null = std::fopen("/dev/null", "w")) dup2(fileno(null), STDERR_FILENO);
    std::vector<char*> argv;
    const std::string cli = tandem::test::cli_path();
    argv.push_back(const_cast<char*>(cli.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(cli.c_str(), argv.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  Captured result;
  char buffer[4096];
  ssize_t n;
  while ((n = read(pipe_fds[0], buffer, sizeof buffer)) > 0)
    result.out.append(buffer, static_cast<size_t>(n));
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

nlohmann::json manifest_generations() {
  std::ifstream in(tandem::test::data_dir() + "/tiny-manifest.json");
  REQUIRE(in);
  return nlohmann::json::parse(in)["models"]["qwen3moe"]["generations"];
}

std::string join(const std::vector<int32_t>& ids, const char* sep) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? sep : "") << ids[i];
  return s.str();
}

}  // namespace

TEST_CASE("cli run --ids --print-ids: greedy ids equal HF generate", "[cli][run]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  for (const auto& gen : manifest_generations()) {
    const auto prompt = gen["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = gen["greedy_ids"].get<std::vector<int32_t>>();
    const auto got =
        run_cli({"run", "-m", model, "--ids", join(prompt, ","), "-n", "24", "--temp", "0", "--print-ids"});
    INFO("prompt: " << gen["prompt"].get<std::string>());
    CHECK(got.exit_code == 0);
    CHECK(got.out == join(greedy, " ") + "\n");
  }
}

TEST_CASE("cli run -p: greedy text equals HF's decode of the greedy ids", "[cli][run]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  for (const auto& gen : manifest_generations()) {
    const auto got =
        run_cli({"run", "-m", model, "-p", gen["prompt"].get<std::string>(), "-n", "24", "--temp", "0"});
    INFO("prompt: " << gen["prompt"].get<std::string>());
    CHECK(got.exit_code == 0);
    CHECK(got.out == gen["greedy_text"].get<std::string>());
  }
}

TEST_CASE("cli run: seeded sampling is reproducible; bad input exits 1", "[cli][run]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  const std::vector<std::string> sampled = {"run", "-m",      model, "--ids",      "51,261,220", "-n",
                                            "16",  "--temp",  "1.0", "--top-k",    "0",          "--top-p",
                                            "1",   "--min-p", "0",   "--print-ids"};
  auto with_seed = [&](const char* seed) {
    auto args = sampled;
    args.insert(args.end(), {"--seed", seed});
    return run_cli(args);
  };
  const auto a = with_seed("7"), b = with_seed("7"), c = with_seed("8");
  CHECK(a.exit_code == 0);
  CHECK(a.out == b.out);
  CHECK(a.out != c.out);
  CHECK(run_cli({"run", "-m", model, "--ids", "1,x", "--print-ids"}).exit_code == 1);
  CHECK(run_cli({"run", "-m", model, "--ids", "1,99999", "--print-ids"}).exit_code == 1);
  CHECK(run_cli({"run", "-m", model + "/missing", "--ids", "1", "--print-ids"}).exit_code == 1);
}

TEST_CASE("cli run --ubatch / -ub: prompts in chunks of N give HF's greedy ids; bad N exits 1", "[cli][run]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  for (const auto& gen : manifest_generations()) {
    const auto prompt = gen["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = gen["greedy_ids"].get<std::vector<int32_t>>();
    INFO("prompt: " << gen["prompt"].get<std::string>());
    // One token per pass, a chunk that does not divide the prompt, llama.cpp's spelling.
    for (const std::vector<std::string>& chunking :
         {std::vector<std::string>{"--ubatch", "1"}, {"--ubatch", "3"}, {"-ub", "2"}, {"--ubatch-size=5"}}) {
      std::vector<std::string> args{"run", "-m", model, "--ids", join(prompt, ","), "-n", "24", "--temp", "0",
                                    "--print-ids"};
      args.insert(args.end(), chunking.begin(), chunking.end());
      INFO(chunking.front());
      const auto got = run_cli(args);
      CHECK(got.exit_code == 0);
      CHECK(got.out == join(greedy, " ") + "\n");
    }
  }
  for (const char* bad : {"-1", "2000000"})
    CHECK(run_cli({"run", "-m", model, "--ids", "1,2,3", "--print-ids", "--ubatch", bad}).exit_code == 1);
  CHECK(run_cli({"run", "-m", model, "--ids", "1,2,3", "--print-ids", "--ubatch", "0x"}).exit_code != 0);  // CLI11's
}
