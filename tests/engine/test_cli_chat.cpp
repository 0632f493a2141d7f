// `tandem chat` end to end through a pseudo-terminal: two greedy turns whose replies must equal
// `tandem run --ids` on the conversation rendered and encoded here, the tokens/s line after each,
// Ctrl-C at the prompt and during a reply, and Ctrl-D exiting with 0.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/fixtures.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// A child process on a pseudo-terminal; everything it prints (stdout and stderr) is collected.
class PtyProcess {
 public:
  explicit PtyProcess(const std::vector<std::string>& args) {
    pid_ = forkpty(&master_, nullptr, nullptr, nullptr);
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      termios t{};
      tcgetattr(STDIN_FILENO, &t);
      t.c_oflag &= ~static_cast<tcflag_t>(OPOST);  // no \n → \r\n, so replies compare byte for byte
      tcsetattr(STDIN_FILENO, TCSANOW, &t);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~PtyProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) close(master_);
  }

  void type(const std::string& keys) {
    REQUIRE(write(master_, keys.data(), keys.size()) == static_cast<ssize_t>(keys.size()));
  }

  // Reads until `needle` appears after `from` in the output; false on timeout or EOF.
  bool wait_for(const std::string& needle, size_t from, double timeout_s = 60) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (output.find(needle, from) == std::string::npos) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{master_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buffer[4096];
      const ssize_t n = read(master_, buffer, sizeof buffer);
      if (n <= 0) return output.find(needle, from) != std::string::npos;  // EIO: the child closed the pty
      output.append(buffer, static_cast<size_t>(n));
    }
    return true;
  }

  int wait_exit(double timeout_s = 30) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    int status = 0;
    while (Clock::now() < deadline) {
      wait_for("\x01never\x01", output.size(), 0.05);  // drain, so the child never blocks on output
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    return -1;
  }

  std::string output;

 private:
  int master_ = -1;
  pid_t pid_ = -1;
  bool exited_ = false;
};

struct Captured {
  int exit_code = -1;
  std::string out;
};

Captured run_cli(const std::vector<std::string>& args) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  Captured result;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fds[0], buffer, sizeof buffer)) > 0) result.out.append(buffer, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::istringstream in(line);
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

std::string join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

// The reply between the echoed input line and the "[N tokens, X tok/s]" line.
std::string reply_after(const std::string& output, const std::string& typed, size_t from) {
  const size_t start = output.find(typed + "\n", from);
  REQUIRE(start != std::string::npos);
  const size_t stats = output.find(" tok/s]", start);
  REQUIRE(stats != std::string::npos);
  const size_t end = output.rfind("\n[", stats);
  REQUIRE(end != std::string::npos);
  REQUIRE(end >= start + typed.size() + 1);
  return output.substr(start + typed.size() + 1, end - (start + typed.size() + 1));
}

}  // namespace

TEST_CASE("cli chat: two turns through a pty equal greedy runs on the rendered conversation", "[cli][chat]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  const std::string cli = tandem::test::cli_path();
  const std::vector<std::string> turns = {"Hello experts", "Tell me more about routing."};
  const std::string n = "8";

  PtyProcess chat({cli, "chat", "-m", model, "-n", n, "--temp", "0", "--ignore-eos"});
  std::vector<std::string> replies;
  size_t from = 0;
  for (const auto& turn : turns) {
    REQUIRE(chat.wait_for("> ", from));
    from = chat.output.size();
    chat.type(turn + "\n");
    REQUIRE(chat.wait_for(" tok/s]", from));
    replies.push_back(reply_after(chat.output, turn, from));
    CHECK(chat.output.find("[" + n + " tokens, ", from) != std::string::npos);
    from = chat.output.find(" tok/s]", from);
  }
  REQUIRE(chat.wait_for("> ", from));
  chat.type("\x03");  // Ctrl-C at the prompt: a hint, not an exit
  REQUIRE(chat.wait_for("Ctrl-C again", from));
  chat.type("\x04");  // Ctrl-D: clean exit
  CHECK(chat.wait_exit() == 0);

  // The reference: render the same conversation here, greedy-run its ids, decode the reply.
  const auto tokenizer = tandem::Tokenizer::load(model);
  const auto tmpl = tandem::ChatTemplate::load(model);
  REQUIRE(tmpl);
  nlohmann::json messages = nlohmann::json::array();
  for (size_t i = 0; i < turns.size(); ++i) {
    messages.push_back({{"role", "user"}, {"content", turns[i]}});
    tandem::ChatRequest request;
    request.messages = &messages;
    request.add_generation_prompt = true;
    const auto ids = tokenizer->encode(tmpl->render(request), false);
    const auto greedy =
        run_cli({cli, "run", "-m", model, "--ids", join(ids), "-n", n, "--temp", "0", "--print-ids"});
    REQUIRE(greedy.exit_code == 0);
    const std::string expected = tokenizer->decode(parse_ids(greedy.out), /*skip_special=*/true);
    INFO("turn " << i);
    CHECK(replies[i] == expected);
    messages.push_back({{"role", "assistant"}, {"content", expected}});
  }
}

TEST_CASE("cli chat: Ctrl-C stops a long reply and the chat goes on", "[cli][chat]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  PtyProcess chat({tandem::test::cli_path(), "chat", "-m", model, "-n", "-1", "--ctx", "32768",
                   "--ignore-eos", "--seed", "3"});
  REQUIRE(chat.wait_for("> ", 0));
  size_t from = chat.output.size();
  chat.type("Write forever\n");
  REQUIRE(chat.wait_for("Write forever\n", from));
  from = chat.output.find("Write forever\n", from) + 14;
  REQUIRE(chat.wait_for("", from + 1, 30));  // the reply has begun streaming
  chat.type("\x03");
  REQUIRE(chat.wait_for(" tok/s, interrupted]", from, 30));
  const size_t after = chat.output.find(" tok/s, interrupted]", from);
  REQUIRE(chat.wait_for("> ", after));
  chat.type("\x04");
  CHECK(chat.wait_exit() == 0);
}

TEST_CASE("cli chat: Ctrl-C stops a runaway chat template and the chat goes on", "[cli][chat]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  const auto template_file = std::filesystem::temp_directory_path() / "tandem-runaway-template.jinja";
  std::ofstream(template_file) << "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x";
  PtyProcess chat({tandem::test::cli_path(), "chat", "-m", model, "-n", "4", "--chat-template-file",
                   template_file.string()});
  REQUIRE(chat.wait_for("> ", 0));
  size_t from = chat.output.size();
  chat.type("hello\n");
  REQUIRE(chat.wait_for("hello\n", from));
  from = chat.output.find("hello\n", from) + 6;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // rendering is under way
  chat.type("\x03");
  REQUIRE(chat.wait_for("tandem: error:", from, 30));
  REQUIRE(chat.wait_for("> ", from));
  chat.type("\x04");
  CHECK(chat.wait_exit() == 0);
  std::filesystem::remove(template_file);
}

TEST_CASE("cli chat: a full context drops the oldest turns; /clear forgets the conversation", "[cli][chat]") {
  const std::string model = tandem::test::data_dir() + "/tiny-qwen3moe";
  PtyProcess chat({tandem::test::cli_path(), "chat", "-m", model, "-n", "4", "--ctx", "48", "--seed", "1",
                   "--ignore-eos"});
  REQUIRE(chat.wait_for("> ", 0));
  size_t from = chat.output.size();
  // Each turn is ~14 tokens of template and text plus 4 of reply: the third no longer fits 48 - 5.
  for (const char* line : {"one two three", "four five six", "seven eight nine"}) {
    chat.type(std::string(line) + "\n");
    REQUIRE(chat.wait_for(" tok/s]", from, 30));
    from = chat.output.find(" tok/s]", from) + 7;
  }
  CHECK(chat.output.find("(context full: dropped the oldest turn)") != std::string::npos);
  CHECK(chat.output.find("tandem: error:") == std::string::npos);
  chat.type("/clear\n");
  REQUIRE(chat.wait_for("(conversation cleared)", from, 30));
  chat.type("\x04");
  CHECK(chat.wait_exit() == 0);
}
