// ABI 4: tandem_model_get_stats (the scheduler's and KV pool's counters) against what the calls
// before it did, and tandem_model_load_with_kv (KV type, prefix cache, SSD tier) against the same
// model without them: a second process-like load finds the first one's blocks on disk and gives
// the same ids.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include "tandem.h"

namespace {

const std::string& tiny_model_path() {
  static const std::string path = tandem::test::data_dir() + "/tiny-qwen3moe";
  return path;
}

// Manifest prompt 0 repeated to 40 ids: two whole 16-token blocks before the last token.
std::vector<int32_t> long_prompt() {
  std::ifstream in(tandem::test::data_dir() + "/tiny-manifest.json");
  const auto ids = nlohmann::json::parse(in)["models"]["qwen3moe"]["generations"][0]["prompt_ids"]
                       .get<std::vector<int32_t>>();
  std::vector<int32_t> prompt;
  while (prompt.size() < 40) prompt.push_back(ids[prompt.size() % ids.size()]);
  return prompt;
}

tandem_load_params small_params() {
  tandem_load_params params = tandem_load_default_params();
  params.threads = 1;
  params.max_sessions = 2;
  params.max_context_tokens = 256;
  return params;
}

tandem_model* load(const tandem_kv_params* kv) {
  const tandem_load_params params = small_params();
  tandem_model* model = nullptr;
  const tandem_status status = tandem_model_load_with_kv(tiny_model_path().c_str(), &params, nullptr, kv, &model);
  INFO(tandem_last_error());
  REQUIRE(status == TANDEM_STATUS_OK);
  return model;
}

tandem_kv_params kv_defaults() {
  tandem_kv_params kv{};
  kv.struct_size = sizeof(kv);
  REQUIRE(tandem_kv_default_params(&kv) == TANDEM_STATUS_OK);
  return kv;
}

tandem_engine_stats stats_of(const tandem_model* model) {
  tandem_engine_stats stats{};
  stats.struct_size = sizeof(stats);
  REQUIRE(tandem_model_get_stats(model, &stats) == TANDEM_STATUS_OK);
  CHECK(stats.struct_size == sizeof(stats));
  return stats;
}

struct Generated {
  std::vector<int32_t> ids;
  tandem_generate_stats stats{};
};

Generated generate(tandem_session* session, const std::vector<int32_t>& prompt, int64_t tokens) {
  tandem_generate_params params = tandem_generate_default_params();
  params.max_new_tokens = tokens;
  params.stop_at_eos = 0;
  Generated g;
  g.ids.resize(static_cast<size_t>(tokens));
  g.stats.struct_size = sizeof(g.stats);
  size_t count = 0;
  const tandem_status status =
      tandem_session_generate(session, prompt.data(), prompt.size(), &params, g.ids.data(), g.ids.size(), &count, &g.stats);
  INFO(tandem_last_error());
  REQUIRE(status == TANDEM_STATUS_OK);
  g.ids.resize(count);
  return g;
}

tandem_session* new_session(tandem_model* model) {
  tandem_session* session = nullptr;
  REQUIRE(tandem_session_new(model, &session) == TANDEM_STATUS_OK);
  return session;
}

}  // namespace

TEST_CASE("C ABI 4: tandem_kv_default_params and bad KV settings", "[capi][kv]") {
  CHECK(TANDEM_ABI_VERSION == 4);
  CHECK(tandem_abi_version() == 4);
  const tandem_kv_params kv = kv_defaults();
  CHECK(kv.kv_type == nullptr);
  CHECK(kv.prefix_cache == 0);
  CHECK(kv.kv_disk_dir == nullptr);
  CHECK(kv.kv_disk_bytes == 0);
  tandem_kv_params tiny{};
  tiny.struct_size = 4;
  CHECK(tandem_kv_default_params(&tiny) == TANDEM_STATUS_INVALID_ARGUMENT);
  CHECK(tandem_kv_default_params(nullptr) == TANDEM_STATUS_INVALID_ARGUMENT);

  const tandem_load_params params = small_params();
  const std::string missing = (std::filesystem::temp_directory_path() / "tandem-capi-no-such-dir").string();
  struct Case {
    tandem_kv_params kv;
    const char* message;
  };
  std::vector<Case> cases;
  cases.push_back({kv, "fp9"});
  cases.back().kv.kv_type = "fp9";
  cases.push_back({kv, "int4:16"});  // int4's group sizes are 32 and 64
  cases.back().kv.kv_type = "int4:16";
  cases.push_back({kv, "tandem-capi-no-such-dir"});
  cases.back().kv.kv_disk_dir = missing.c_str();
  cases.push_back({kv, "without a kv_disk_dir"});
  cases.back().kv.kv_disk_bytes = 1 << 20;
  cases.push_back({kv, "struct_size"});
  cases.back().kv.struct_size = 3;
  for (const Case& c : cases) {
    INFO(c.message);
    tandem_model* model = reinterpret_cast<tandem_model*>(&cases);  // must be reset to NULL
    CHECK(tandem_model_load_with_kv(tiny_model_path().c_str(), &params, nullptr, &c.kv, &model) ==
          TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(model == nullptr);
    CHECK(std::string(tandem_last_error()).find(c.message) != std::string::npos);
  }
}

TEST_CASE("C ABI 4: kv_type takes int4's group size (int4:32 = int4, int4:64)", "[capi][kv]") {
  const std::vector<int32_t> prompt = long_prompt();
  std::vector<std::vector<int32_t>> ids;
  for (const char* type : {"int4", "int4:32", "int4:64"}) {
    INFO(type);
    tandem_kv_params kv = kv_defaults();
    kv.kv_type = type;
    tandem_model* model = load(&kv);
    tandem_session* session = new_session(model);
    ids.push_back(generate(session, prompt, 4).ids);
    CHECK(ids.back().size() == 4);
    tandem_session_free(session);
    tandem_model_free(model);
  }
  CHECK(ids[1] == ids[0]);
}

TEST_CASE("C ABI 4: tandem_model_get_stats counts blocks, steps and prefix hits", "[capi][kv]") {
  tandem_kv_params kv = kv_defaults();
  kv.prefix_cache = 1;
  tandem_model* model = load(&kv);
  const std::vector<int32_t> prompt = long_prompt();

  tandem_engine_stats s = stats_of(model);
  CHECK(s.kv_block_tokens == 16);
  CHECK(s.kv_blocks_total == 2 * 256 / 16);
  CHECK(s.kv_blocks_in_use == 0);
  CHECK(s.kv_blocks_free == s.kv_blocks_total);
  CHECK(s.steps == 0);
  CHECK(s.prefix_hit_tokens == 0);

  tandem_session* a = new_session(model);
  const Generated first = generate(a, prompt, 8);
  s = stats_of(model);
  // The session holds its prompt and replies: 40 + 8 tokens, less the last id, which never ran.
  CHECK(s.kv_blocks_in_use == (40 + 8 - 1 + 15) / 16);
  CHECK(s.kv_blocks_free == s.kv_blocks_total - s.kv_blocks_in_use);
  CHECK(s.session_chunks == 8);  // one prefill, seven decodes
  CHECK(s.steps == s.session_chunks);
  CHECK(s.batched_steps == 0);
  CHECK(s.running_sequences == 0);
  CHECK(s.waiting_sequences == 0);
  CHECK(s.kv_blocks_cached >= 2);  // the prompt's whole blocks, cached once it ran
  CHECK(first.stats.cached_prompt_tokens == 0);

  tandem_session* b = new_session(model);
  const Generated second = generate(b, prompt, 8);
  CHECK(second.ids == first.ids);
  CHECK(second.stats.cached_prompt_tokens == 32);
  s = stats_of(model);
  CHECK(s.prefix_hit_tokens == 32);
  CHECK(s.kv_disk_records == 0);

  tandem_session_free(a);
  tandem_session_free(b);
  s = stats_of(model);
  CHECK(s.kv_blocks_in_use == 0);
  CHECK(s.kv_blocks_free == s.kv_blocks_total);
  CHECK(s.kv_blocks_cached > 0);

  tandem_engine_stats small{};
  small.struct_size = 3;
  CHECK(tandem_model_get_stats(model, &small) == TANDEM_STATUS_INVALID_ARGUMENT);
  CHECK(tandem_model_get_stats(nullptr, &s) == TANDEM_STATUS_INVALID_ARGUMENT);
  CHECK(tandem_model_get_stats(model, nullptr) == TANDEM_STATUS_INVALID_ARGUMENT);
  tandem_model_free(model);
}

TEST_CASE("C ABI 4: the SSD tier through tandem_kv_params serves a later load", "[capi][kv]") {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tandem-capi-kv-disk-" + std::to_string(static_cast<long long>(::getpid())));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string dir_text = dir.string();
  const std::vector<int32_t> prompt = long_prompt();

  // Without any cache: the reference ids.
  tandem_model* plain = load(nullptr);
  tandem_session* session = new_session(plain);
  const Generated reference = generate(session, prompt, 8);
  tandem_session_free(session);
  tandem_model_free(plain);

  tandem_kv_params kv = kv_defaults();
  kv.kv_disk_dir = dir_text.c_str();
  kv.kv_disk_bytes = 64 << 20;
  {
    tandem_model* model = load(&kv);
    session = new_session(model);
    const Generated first = generate(session, prompt, 8);
    CHECK(first.ids == reference.ids);
    CHECK(first.stats.cached_prompt_tokens == 0);
    tandem_session_free(session);
    const tandem_engine_stats s = stats_of(model);
    CHECK(s.kv_disk_written >= 2);
    CHECK(s.kv_disk_records == s.kv_disk_written);
    tandem_model_free(model);
  }
  {
    tandem_model* model = load(&kv);  // a fresh pool: only the disk holds the blocks
    tandem_engine_stats s = stats_of(model);
    CHECK(s.kv_disk_records >= 2);
    CHECK(s.kv_blocks_cached == 0);
    session = new_session(model);
    const Generated again = generate(session, prompt, 8);
    CHECK(again.ids == reference.ids);
    CHECK(again.stats.cached_prompt_tokens == 32);
    s = stats_of(model);
    CHECK(s.kv_disk_loaded == 2);
    CHECK(s.prefix_hit_tokens == 32);
    CHECK(s.kv_disk_rejected == 0);
    tandem_session_free(session);
    tandem_model_free(model);
  }
  std::filesystem::remove_all(dir);
}
