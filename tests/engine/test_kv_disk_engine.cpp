// The SSD tier under the prefix cache, end to end: an engine (as a later process) loading the same
// model with the same --kv-disk directory adopts the prompt prefix from disk and gives the cold
// run's logits bit-for-bit and its greedy tokens; a corrupted record is recomputed (same tokens,
// fewer cached); another KV type finds nothing; `tandem run --kv-disk` works and refuses bad flags.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "support/cli.hpp"
#include "support/file_size_limit.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

const std::vector<int32_t> kPrompt = {51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280, 78, 87, 220, 73, 287, 9};

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("tandem-kvdisk-engine-" + name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::unique_ptr<Engine> load(const std::string& name, KvType type, const std::string& disk_dir) {
  LoadOptions o;
  o.max_context_tokens = 64;
  o.max_sessions = 2;
  o.kv_block_tokens = 4;
  o.kv_type = type;
  o.kv_disk_dir = disk_dir;
  o.kv_disk_bytes = uint64_t{1} << 30;
  o.load_tokenizer = false;
  return Engine::load(test::data_dir() + "/" + name, o);
}

GenerateResult greedy(Engine& engine) {
  GenerateOptions options;
  options.sampling.temperature = 0;
  options.max_new_tokens = 8;
  auto session = engine.new_session();
  return generate(*session, nullptr, kPrompt, options);
}

std::vector<float> logits_of(Session& s) { return {s.logits().begin(), s.logits().end()}; }

}  // namespace

TEST_CASE("KV disk tier: a later engine adopts the prefix from disk with the cold run's logits and tokens",
          "[engine][kv][disk]") {
  // The trained Qwen3-MoE's rows of 128 values take int4:64's groups of 64 (the tiny models' 32 cannot).
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3", "trained-qwen3moe/qwen3moe-q4_k_m.gguf"}) {
    for (const KvType type : {KvType::f16, KvType::int4, KvType::int4_g64}) {
      INFO(name << " " << kv_type_name(type));
      std::string dir_name = std::string(name) + "-" + kv_type_name(type);
      std::replace(dir_name.begin(), dir_name.end(), '/', '_');
      TempDir dir(dir_name);
      const auto off = load(name, type, "");
      const GenerateResult cold = greedy(*off);
      CHECK(cold.stats.cached_prompt_tokens == 0);
      auto cold_session = off->new_session();  // the chunks a hit runs: 16 adopted, then 2
      cold_session->prefill(std::span<const int32_t>(kPrompt).first(16));
      cold_session->prefill(std::span<const int32_t>(kPrompt).subspan(16));
      const std::vector<float> cold_logits = logits_of(*cold_session);
      {
        const auto first = load(name, type, dir.path.string());
        const GenerateResult r = greedy(*first);
        CHECK(r.stats.cached_prompt_tokens == 0);
        CHECK(r.ids == cold.ids);
        const auto stats = first->kv_disk_stats();
        REQUIRE(stats);
        CHECK(stats->written >= 4);  // every full block of prompt and output went through
        CHECK(stats->loaded == 0);
      }
      {  // a later process: memory is empty, the disk has the blocks
        const auto later = load(name, type, dir.path.string());
        auto session = later->new_session();
        session->prefill(kPrompt);
        CHECK(session->cached_prompt_tokens() == 16);
        CHECK(logits_of(*session) == cold_logits);
        session.reset();
        const GenerateResult r = greedy(*later);  // now from the host tier
        CHECK(r.stats.cached_prompt_tokens == 16);
        CHECK(r.ids == cold.ids);
        CHECK(later->kv_disk_stats()->loaded == 4);
        CHECK(later->kv_disk_stats()->found_at_start >= 4);
      }
    }
  }
}

TEST_CASE("KV disk tier: a disk that refuses every write loses no request; the host tier still serves",
          "[engine][kv][disk]") {
  TempDir dir("full");
  const auto off = load("tiny-qwen3moe", KvType::f16, "");
  const GenerateResult cold = greedy(*off);
  const auto engine = load("tiny-qwen3moe", KvType::f16, dir.path.string());
  std::optional<KvDiskStats> stats;
  {
    const test::FileSizeLimit full(64);  // smaller than any record
    const GenerateResult first = greedy(*engine);
    CHECK(first.ids == cold.ids);
    const GenerateResult again = greedy(*engine);  // the prefix from the host tier
    CHECK(again.ids == cold.ids);
    CHECK(again.stats.cached_prompt_tokens == 16);
    stats = engine->kv_disk_stats();  // waits for the writes in flight while the limit holds
  }
  REQUIRE(stats);
  CHECK(stats->write_failures >= 4);
  CHECK(stats->written == 0);
  CHECK(stats->records == 0);
}

TEST_CASE("KV disk tier: a corrupt record is recomputed; another KV type finds nothing", "[engine][kv][disk]") {
  TempDir dir("corrupt");
  const auto off = load("tiny-qwen3moe", KvType::f16, "");
  const GenerateResult cold = greedy(*off);
  { (void)greedy(*load("tiny-qwen3moe", KvType::f16, dir.path.string())); }
  // Flip one payload byte of every record: the prompt's four are rejected, nothing is adopted.
  int flipped = 0;
  for (const auto& entry : fs::directory_iterator(dir.path)) {
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0;
    f.read(&c, 1);
    f.seekp(200);
    c = static_cast<char>(c ^ 1);
    f.write(&c, 1);
    ++flipped;
  }
  REQUIRE(flipped >= 4);
  {
    const auto later = load("tiny-qwen3moe", KvType::f16, dir.path.string());
    const GenerateResult r = greedy(*later);
    CHECK(r.stats.cached_prompt_tokens == 0);
    CHECK(r.ids == cold.ids);
    const auto stats = later->kv_disk_stats();
    CHECK(stats->rejected_corrupt == 4);
    CHECK(stats->loaded == 0);
  }
  const auto other_type = load("tiny-qwen3moe", KvType::bf16, dir.path.string());
  CHECK(other_type->kv_disk_stats()->found_at_start == 0);  // f16 records are another tier's files
  CHECK(greedy(*other_type).stats.cached_prompt_tokens == 0);
}

TEST_CASE("tandem run --kv-disk: reuses the prefix across processes; bad flags exit 1 naming them",
          "[engine][kv][disk][cli]") {
  TempDir dir("cli");
  const std::string model = test::shell_quote(test::data_dir() + "/tiny-qwen3moe");
  const std::string ids = "51,261,220,80,84,72,481,263,304,86,77,280,78,87,220,73,287,9,51,261,220,80,84,72,481,263,304,86,77,280,78,87,220,73,287,9";
  // On the CPU where a GPU is visible too, so every run takes the same path and gives the same tokens.
  const std::string run = "run -m " + model + " --ids " + ids + " -n 6 --temp 0 --print-ids --stats --placement '*=cpu'";
  const auto plain = test::run_cli_captured(run);
  REQUIRE(plain.exit_code == 0);
  const std::string disk = " --kv-disk " + test::shell_quote(dir.path.string()) + " --kv-disk-size 64M";
  const auto first = test::run_cli_captured(run + disk);
  const auto second = test::run_cli_captured(run + disk);
  REQUIRE(first.exit_code == 0);
  REQUIRE(second.exit_code == 0);
  CHECK(first.out == plain.out);
  CHECK(second.out == plain.out);
  CHECK(first.err.find("[prompt tokens from the prefix cache: 0]") != std::string::npos);
  CHECK(second.err.find("[prompt tokens from the prefix cache: 32]") != std::string::npos);  // 2 blocks of 16
  CHECK(second.err.find("kv disk: ") != std::string::npos);
  // Attention on the CPU: the pool is host memory, so --kv-host-size is accepted and no tier is made.
  const auto host_sized = test::run_cli_captured(run + disk + " --kv-host-size 8G");
  REQUIRE(host_sized.exit_code == 0);
  CHECK(host_sized.out == plain.out);
  CHECK(host_sized.err.find("[prompt tokens from the prefix cache: 32]") != std::string::npos);
  CHECK(host_sized.err.find("kv host: ") == std::string::npos);

  { std::ofstream(dir.path / "file") << "x"; }
  const struct {
    std::string flags, says;
  } bad[] = {
      {" --kv-disk " + test::shell_quote(dir.path.string() + "/missing"), "does not exist"},
      {" --kv-disk /proc", "is not writable"},
      {" --kv-disk " + test::shell_quote(dir.path.string() + "/file"), "is not a directory"},
      {disk + "x", "--kv-disk-size '64Mx'"},
      {" --kv-disk " + test::shell_quote(dir.path.string()) + " --kv-disk-size 0", "--kv-disk-size"},
      {" --kv-disk " + test::shell_quote(dir.path.string()) + " --kv-disk-size 1000P", "--kv-disk-size"},
      {" --kv-disk-size 1G", "--kv-disk-size needs --kv-disk"},
      {" --kv-host-size 8Q", "--kv-host-size '8Q': expected bytes"},
      {" --kv-host-size 12x", "--kv-host-size '12x': expected bytes"},
  };
  for (const auto& b : bad) {
    INFO(b.flags);
    const auto r = test::run_cli_captured(run + b.flags);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(b.says) != std::string::npos);
    CHECK(r.out.empty());
  }
}

TEST_CASE("tandem run --kv-disk on a full file system: a clear error naming it, before the model loads",
          "[engine][kv][disk][cli]") {
  TempDir dir("full");
  const fs::path mount = dir.path / "mnt", err = dir.path / "stderr";
  fs::create_directories(mount);
  // A 256 KiB tmpfs in a private mount namespace (unshare -rm: no root needed where user namespaces
  // are allowed), filled to its last byte, then the run.
  const std::string m = test::shell_quote(mount.string());
  const std::string inner = "mount -t tmpfs -o size=256k none " + m + " || exit 77; dd if=/dev/zero of=" + m +
                            "/fill bs=4096 >/dev/null 2>&1; exec " + test::shell_quote(test::cli_path()) +
                            " run -m " + test::shell_quote(test::data_dir() + "/tiny-qwen3moe") +
                            " --ids 1,2,3 -n 1 --kv-disk " + m;
  const int status = std::system(("unshare -rm sh -c " + test::shell_quote(inner) + " 2>" +
                                  test::shell_quote(err.string()) + " >/dev/null").c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77 || code == 127 || (code == 1 && fs::file_size(err) == 0)) {
    WARN("skipped: no private tmpfs here (unshare -rm or mount refused)");
    return;
  }
  std::ifstream in(err);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO(text);
  CHECK(code == 1);
  CHECK(text.find("--kv-disk '" + mount.string() + "' is full") != std::string::npos);
}

TEST_CASE("tandem bench kv --json reports the SSD tier's TTFT", "[engine][kv][disk][cli][bench]") {
  TempDir dir("bench");
  const auto r = test::run_cli_captured("bench kv -m " + test::shell_quote(test::data_dir() + "/tiny-qwen3moe") +
                                        " --prompt-tokens 40 --cached-tokens 32 --decode-tokens 2 -r 1 -t 1 --kv-disk " +
                                        test::shell_quote(dir.path.string()) + " --json");
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["cached_tokens"] == 32);
  CHECK(j["ttft_disk_s"].get<double>() > 0);
  CHECK(j["speedup_disk"].get<double>() > 0);
  CHECK(j["decode_tok_s_disk"].get<double>() > 0);
  CHECK(!j["disk_fs"].get<std::string>().empty());
  CHECK(!j["disk_io"].get<std::string>().empty());
  CHECK(j["disk_page_cache_resident"].get<double>() >= 0);
  CHECK_FALSE(j.contains("ttft_device_s"));  // attention on the CPU: no VRAM tier
  CHECK(fs::is_empty(dir.path));  // its record directory is gone
}
