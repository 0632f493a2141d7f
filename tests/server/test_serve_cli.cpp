// `tandem serve` and `tandem bench serve` command-line contracts: bad flags exit 1 naming the flag,
// a port in use is an error, and bench serve's JSON has a row per concurrency with every reply's
// tokens counted and no prompt served from the prefix cache.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli.hpp"
#include "support/fixtures.hpp"

using namespace tandem;

namespace {
const std::string kModel = test::shell_quote(test::data_dir() + "/tiny-qwen3moe");
}

TEST_CASE("serve: bad flags exit 1 naming the flag", "[server][cli]") {
  for (const auto& [args, flag] :
       std::vector<std::pair<std::string, std::string>>{{"--port 70000", "--port"},
                                                        {"--parallel 0", "--parallel"},
                                                        {"--max-batch-tokens 0", "--max-batch-tokens"},
                                                        {"--reasoning-format xml", "--reasoning-format"},
                                                        {"--max-body 0", "--max-body"},
                                                        {"--kv-disk /nonexistent/tandem-kv", "--kv-disk"},
                                                        {"--kv-disk-size 1G", "--kv-disk"},
                                                        {"--no-prefix-cache --kv-disk /tmp", "--no-prefix-cache"}}) {
    const auto r = test::run_cli_captured("serve -m " + kModel + " " + args);
    INFO(args << ": " << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(flag) != std::string::npos);
  }
}

TEST_CASE("serve: a port in use is an error naming it", "[server][cli]") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const int port = ntohs(addr.sin_port);
  const auto r = test::run_cli_captured("serve -m " + kModel + " -t 1 --port " + std::to_string(port));
  ::close(fd);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("cannot listen on 127.0.0.1:" + std::to_string(port)) != std::string::npos);
}

TEST_CASE("bench serve: --json has a row per concurrency with every token counted", "[server][cli]") {
  // Over HTTP, and (--direct) straight to the engine's scheduler: the same rows.
  const bool direct = GENERATE(false, true);
  INFO("direct " << direct);
  const auto r =
      test::run_cli_captured("bench serve -m " + kModel +
                             " -t 1 --clients 1,3 --requests 2 --max-tokens 8 --prompt-tokens 40 -r 2 --json" +
                             (direct ? " --direct" : ""));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["direct"] == direct);
  CHECK(j["parallel"] == 3);
  CHECK(j["max_tokens"] == 8);
  REQUIRE(j["results"].size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    const auto& row = j["results"][i];
    const int clients = i == 0 ? 1 : 3;
    CHECK(row["clients"] == clients);
    CHECK(row["requests"] == clients * 2);
    CHECK(row["output_tokens"] == clients * 2 * 8);
    // Each repetition sends prompts of its own: none is served from the prefix cache.
    CHECK(row["cached_prompt_tokens"] == 0);
    CHECK(row["output_tokens_per_second"].get<double>() > 0);
    CHECK(row["ttft_ms"]["p50"].get<double>() > 0);
    CHECK(row["ttft_ms"]["p50"].get<double>() <= row["ttft_ms"]["p99"].get<double>());
    CHECK(row["itl_ms"]["p90"].get<double>() >= row["itl_ms"]["p50"].get<double>());
  }
  CHECK(j["results"][0]["speedup"] == 1.0);
  const auto bad = test::run_cli_captured("bench serve -m " + kModel + " --clients 0");
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("--clients 0") != std::string::npos);
}
