// The C ABI against references it can fail on: the manifest's greedy ids (HF generate), the
// tokenizer's ids from the manifest, the C++ Session's logits, and the documented error statuses.
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include "tandem.h"
#include "tandem/engine/engine.hpp"

namespace {

const std::string& tiny_model_path() {
  static const std::string path = tandem::test::data_dir() + "/tiny-qwen3moe";
  return path;
}

nlohmann::json manifest_generation(int index) {
  std::ifstream in(tandem::test::data_dir() + "/tiny-manifest.json");
  return nlohmann::json::parse(in)["models"]["qwen3moe"]["generations"][index];
}

tandem_model* load_tiny_model(int32_t threads = 1) {
  tandem_load_params params = tandem_load_default_params();
  params.threads = threads;
  params.max_context_tokens = 4096;
  tandem_model* model = nullptr;
  const tandem_status status = tandem_model_load(tiny_model_path().c_str(), &params, &model);
  INFO(tandem_last_error());
  REQUIRE(status == TANDEM_STATUS_OK);
  REQUIRE(model != nullptr);
  return model;
}

struct ModelGuard {
  tandem_model* model;
  ~ModelGuard() { tandem_model_free(model); }
};
struct SessionGuard {
  tandem_session* session;
  ~SessionGuard() { tandem_session_free(session); }
};

}  // namespace

TEST_CASE("C ABI: version and status names") {
  CHECK(tandem_abi_version() == TANDEM_ABI_VERSION);
  CHECK(std::string(tandem_status_name(TANDEM_STATUS_CORRUPT_FILE)) == "corrupt_file");
  CHECK(std::string(tandem_status_name(static_cast<tandem_status>(1234))) == "unknown");
}

TEST_CASE("C ABI: greedy continuation of manifest prompt 0 equals HF generate") {
  const nlohmann::json gen = manifest_generation(0);
  const auto prompt_ids = gen["prompt_ids"].get<std::vector<int32_t>>();
  const auto expected = gen["greedy_ids"].get<std::vector<int32_t>>();
  ModelGuard model{load_tiny_model()};

  tandem_model_info info{};
  info.struct_size = sizeof(info);
  REQUIRE(tandem_model_get_info(model.model, &info) == TANDEM_STATUS_OK);
  CHECK(std::string(info.architecture) == "qwen3_moe");
  CHECK(info.vocab_size == 512);
  CHECK(info.has_tokenizer == 1);

  // The tokenizer through the ABI gives the manifest's prompt ids (HF tokenizers made those).
  const std::string prompt = gen["prompt"].get<std::string>();
  size_t needed = 0;
  REQUIRE(tandem_tokenize(model.model, prompt.data(), prompt.size(), 1, nullptr, 0, &needed) ==
          TANDEM_STATUS_BUFFER_TOO_SMALL);
  REQUIRE(needed == prompt_ids.size());
  std::vector<int32_t> tokenized(needed);
  REQUIRE(tandem_tokenize(model.model, prompt.data(), prompt.size(), 1, tokenized.data(), tokenized.size(),
                          &needed) == TANDEM_STATUS_OK);
  CHECK(tokenized == prompt_ids);

  tandem_session* raw_session = nullptr;
  REQUIRE(tandem_session_new(model.model, &raw_session) == TANDEM_STATUS_OK);
  SessionGuard session{raw_session};
  tandem_generate_params params = tandem_generate_default_params();
  params.max_new_tokens = static_cast<int64_t>(expected.size());
  params.stop_at_eos = 0;
  std::string streamed;
  params.user_data = &streamed;
  params.on_token = [](int32_t, const char* text, size_t len, void* user) -> int32_t {
    static_cast<std::string*>(user)->append(text, len);
    return 0;
  };
  std::vector<int32_t> ids(64);
  size_t count = 0;
  tandem_generate_stats stats{};
  stats.struct_size = sizeof(stats);
  const tandem_status status = tandem_session_generate(session.session, prompt_ids.data(), prompt_ids.size(),
                                                       &params, ids.data(), ids.size(), &count, &stats);
  INFO(tandem_last_error());
  REQUIRE(status == TANDEM_STATUS_OK);
  ids.resize(count);
  CHECK(ids == expected);
  CHECK(stats.generated_tokens == static_cast<int64_t>(expected.size()));
  CHECK(stats.stop_reason == TANDEM_STOP_MAX_TOKENS);

  // The streamed text is the detokenised continuation.
  char* text = nullptr;
  size_t text_len = 0;
  REQUIRE(tandem_detokenize(model.model, expected.data(), expected.size(), 0, &text, &text_len) == TANDEM_STATUS_OK);
  CHECK(streamed == std::string(text, text_len));
  tandem_free_string(text);

  // A buffer smaller than max_new_tokens caps the generation instead of overflowing.
  REQUIRE(tandem_session_reset(session.session) == TANDEM_STATUS_OK);
  std::vector<int32_t> few(5);
  params.on_token = nullptr;
  REQUIRE(tandem_session_generate(session.session, prompt_ids.data(), prompt_ids.size(), &params, few.data(),
                                  few.size(), &count, nullptr) == TANDEM_STATUS_OK);
  CHECK(count == 5);
  CHECK(std::vector<int32_t>(expected.begin(), expected.begin() + 5) == few);
}

TEST_CASE("C ABI: logits equal the C++ Session's") {
  const auto prompt_ids = manifest_generation(1)["prompt_ids"].get<std::vector<int32_t>>();
  ModelGuard model{load_tiny_model()};
  tandem_session* raw_session = nullptr;
  REQUIRE(tandem_session_new(model.model, &raw_session) == TANDEM_STATUS_OK);
  SessionGuard session{raw_session};

  const float* borrowed = nullptr;
  size_t vocab = 0;
  CHECK(tandem_session_logits(session.session, &borrowed, &vocab) == TANDEM_STATUS_INVALID_ARGUMENT);
  REQUIRE(tandem_session_prefill(session.session, prompt_ids.data(), prompt_ids.size()) == TANDEM_STATUS_OK);
  REQUIRE(tandem_session_logits(session.session, &borrowed, &vocab) == TANDEM_STATUS_OK);
  REQUIRE(vocab == 512);
  std::vector<float> copied(vocab);
  size_t copied_count = 0;
  REQUIRE(tandem_session_copy_logits(session.session, copied.data(), 10, &copied_count) ==
          TANDEM_STATUS_BUFFER_TOO_SMALL);
  CHECK(copied_count == vocab);
  REQUIRE(tandem_session_copy_logits(session.session, copied.data(), copied.size(), &copied_count) ==
          TANDEM_STATUS_OK);
  CHECK(std::memcmp(copied.data(), borrowed, vocab * sizeof(float)) == 0);

  tandem::LoadOptions options;
  options.threads = 1;
  auto engine = tandem::Engine::load(tiny_model_path(), options);
  auto cpp_session = engine->new_session();
  cpp_session->prefill(prompt_ids);
  const auto reference = cpp_session->logits();
  REQUIRE(reference.size() == vocab);
  CHECK(std::memcmp(reference.data(), borrowed, vocab * sizeof(float)) == 0);

  // Decoding one more token moves both the same way.
  REQUIRE(tandem_session_decode(session.session, 42) == TANDEM_STATUS_OK);
  cpp_session->decode(42);
  REQUIRE(tandem_session_logits(session.session, &borrowed, &vocab) == TANDEM_STATUS_OK);
  CHECK(std::memcmp(cpp_session->logits().data(), borrowed, vocab * sizeof(float)) == 0);
  int64_t position = 0;
  REQUIRE(tandem_session_position(session.session, &position) == TANDEM_STATUS_OK);
  CHECK(position == static_cast<int64_t>(prompt_ids.size()) + 1);
  REQUIRE(tandem_session_reset(session.session) == TANDEM_STATUS_OK);
  REQUIRE(tandem_session_position(session.session, &position) == TANDEM_STATUS_OK);
  CHECK(position == 0);
}

TEST_CASE("C ABI: error paths give a status and a message") {
  tandem_model* model = reinterpret_cast<tandem_model*>(&model);  // must be overwritten with NULL

  SECTION("missing file") {
    const std::string path = "/nonexistent/tandem-model-dir";
    CHECK(tandem_model_load(path.c_str(), nullptr, &model) == TANDEM_STATUS_IO);
    CHECK(model == nullptr);
    CHECK(std::string(tandem_last_error()).find(path) != std::string::npos);
  }
  SECTION("corrupt file") {
    const auto path = std::filesystem::temp_directory_path() / "tandem-capi-corrupt.gguf";
    std::ofstream(path, std::ios::binary) << "GGUF\x03\x00\x00\x00 this is not a model";
    CHECK(tandem_model_load(path.c_str(), nullptr, &model) == TANDEM_STATUS_CORRUPT_FILE);
    CHECK(model == nullptr);
    CHECK(std::string(tandem_last_error()).find("tandem-capi-corrupt.gguf") != std::string::npos);
    std::filesystem::remove(path);
  }
  SECTION("bad struct_size") {
    for (size_t bad : {size_t{0}, size_t{8}, size_t{1} << 40}) {
      tandem_load_params params = tandem_load_default_params();
      params.struct_size = bad;
      CHECK(tandem_model_load(tiny_model_path().c_str(), &params, &model) == TANDEM_STATUS_INVALID_ARGUMENT);
      CHECK(model == nullptr);
      CHECK(std::string(tandem_last_error()).find("tandem_load_params.struct_size") != std::string::npos);
    }
    tandem_sampler_params sampling = tandem_sampler_default_params();
    sampling.struct_size = 3;
    tandem_sampler* sampler = nullptr;
    CHECK(tandem_sampler_new(&sampling, &sampler) == TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(sampler == nullptr);
  }
  SECTION("NULL arguments and bad values") {
    CHECK(tandem_model_load(nullptr, nullptr, &model) == TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(std::string(tandem_last_error()).find("path") != std::string::npos);
    CHECK(tandem_model_load(tiny_model_path().c_str(), nullptr, nullptr) == TANDEM_STATUS_INVALID_ARGUMENT);
    tandem_load_params params = tandem_load_default_params();
    params.max_context_tokens = -5;
    CHECK(tandem_model_load(tiny_model_path().c_str(), &params, &model) == TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(std::string(tandem_last_error()).find("max_context_tokens") != std::string::npos);
    params = tandem_load_default_params();
    CHECK(params.max_batch_tokens == 0);  // automatic
    params.max_batch_tokens = -1;
    CHECK(tandem_model_load(tiny_model_path().c_str(), &params, &model) == TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(std::string(tandem_last_error()).find("max_batch_tokens is -1, must be >= 0") != std::string::npos);
    tandem_sampler_params sampling = tandem_sampler_default_params();
    sampling.top_p = 3.0f;
    tandem_sampler* sampler = nullptr;
    CHECK(tandem_sampler_new(&sampling, &sampler) == TANDEM_STATUS_INVALID_ARGUMENT);
    CHECK(std::string(tandem_last_error()).find("top_p") != std::string::npos);
  }
  SECTION("the message is per thread") {
    CHECK(tandem_model_load("/nonexistent/a", nullptr, &model) == TANDEM_STATUS_IO);
    std::string other_thread_message = "unset";
    std::thread([&] { other_thread_message = tandem_last_error(); }).join();
    CHECK(other_thread_message.empty());
    CHECK(std::string(tandem_last_error()).find("/nonexistent/a") != std::string::npos);
  }
}

TEST_CASE("C ABI: a session's generation is cancelled from another thread") {
  const auto prompt_ids = manifest_generation(0)["prompt_ids"].get<std::vector<int32_t>>();
  ModelGuard model{load_tiny_model()};
  tandem_session* raw_session = nullptr;
  REQUIRE(tandem_session_new(model.model, &raw_session) == TANDEM_STATUS_OK);
  SessionGuard session{raw_session};

  struct Shared {
    tandem_session* session;
    std::atomic<bool> first_token{false};
    std::atomic<bool> cancel_sent{false};
  } shared{session.session};
  std::thread canceller([&shared] {
    while (!shared.first_token.load()) std::this_thread::yield();
    tandem_session_cancel(shared.session);
    shared.cancel_sent.store(true);
  });

  tandem_generate_params params = tandem_generate_default_params();
  params.max_new_tokens = 1000;
  params.stop_at_eos = 0;
  params.user_data = &shared;
  params.on_token = [](int32_t, const char*, size_t, void* user) -> int32_t {
    auto* s = static_cast<Shared*>(user);
    s->first_token.store(true);
    // Hold this token until the other thread's cancel landed, so the test does not depend on
    // how fast the tiny model decodes (bounded, in case cancel never arrives).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!s->cancel_sent.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    return 0;
  };
  std::vector<int32_t> ids(1000);
  size_t count = 0;
  tandem_generate_stats stats{};
  stats.struct_size = sizeof(stats);
  const tandem_status status = tandem_session_generate(session.session, prompt_ids.data(), prompt_ids.size(),
                                                       &params, ids.data(), ids.size(), &count, &stats);
  canceller.join();
  CHECK(status == TANDEM_STATUS_CANCELLED);
  CHECK(stats.stop_reason == TANDEM_STOP_CANCELLED);
  CHECK(count >= 1);
  CHECK(count < 10);
  CHECK(std::string(tandem_last_error()).find("cancel") != std::string::npos);

  // The cancel applied to that call only: the session generates normally again.
  params.on_token = nullptr;
  params.max_new_tokens = 3;
  REQUIRE(tandem_session_generate(session.session, prompt_ids.data(), prompt_ids.size(), &params, ids.data(),
                                  ids.size(), &count, nullptr) == TANDEM_STATUS_OK);
  CHECK(count == 3);
}

TEST_CASE("C ABI: load cancel flag and progress callback") {
  tandem_load_params params = tandem_load_default_params();
  int32_t cancel = 1;
  params.cancel_flag = &cancel;
  tandem_model* model = nullptr;
  CHECK(tandem_model_load(tiny_model_path().c_str(), &params, &model) == TANDEM_STATUS_CANCELLED);
  CHECK(model == nullptr);

  cancel = 0;
  std::vector<float> fractions;
  params.progress_user_data = &fractions;
  params.progress = [](float fraction, const char*, void* user) {
    static_cast<std::vector<float>*>(user)->push_back(fraction);
  };
  REQUIRE(tandem_model_load(tiny_model_path().c_str(), &params, &model) == TANDEM_STATUS_OK);
  tandem_model_free(model);
  REQUIRE_FALSE(fractions.empty());
  CHECK(fractions.back() == Approx(1.0f));
}

TEST_CASE("C ABI: chat template rendering matches transformers") {
  std::ifstream in(tandem::test::data_dir() + "/tiny-manifest.json");
  const nlohmann::json chat = nlohmann::json::parse(in)["tokenizer"]["chat_example"];
  ModelGuard model{load_tiny_model()};
  const std::string messages = chat["messages"].dump();
  tandem_chat_params params = tandem_chat_default_params();
  params.messages_json = messages.c_str();
  params.add_generation_prompt = 1;
  char* rendered = nullptr;
  const tandem_status status = tandem_chat_render(model.model, &params, &rendered);
  INFO(tandem_last_error());
  REQUIRE(status == TANDEM_STATUS_OK);
  CHECK(std::string(rendered) == chat["rendered"].get<std::string>());
  tandem_free_string(rendered);

  params.messages_json = "[{\"role\": ";
  CHECK(tandem_chat_render(model.model, &params, &rendered) == TANDEM_STATUS_INVALID_ARGUMENT);
  CHECK(rendered == nullptr);
  CHECK(std::string(tandem_last_error()).find("messages_json") != std::string::npos);
}

TEST_CASE("C ABI: log callback receives load messages") {
  std::vector<std::string> messages;
  tandem_set_log_callback(
      [](tandem_log_level, const char* message, void* user) {
        static_cast<std::vector<std::string>*>(user)->push_back(message);
      },
      &messages, TANDEM_LOG_INFO);
  tandem_model* model = load_tiny_model();
  tandem_model_free(model);
  tandem_set_log_callback(nullptr, nullptr, TANDEM_LOG_WARN);
  REQUIRE_FALSE(messages.empty());
  CHECK(messages.front().find("tiny-qwen3moe") != std::string::npos);
}

TEST_CASE("C ABI: tandem_model_load_with_overrides (ABI 2)") {
  const std::string gguf = tandem::test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf";
  tandem_model* model = nullptr;
  tandem_load_params params = tandem_load_default_params();
  params.threads = 1;
  params.max_context_tokens = 64;
  CHECK(tandem_abi_version() == TANDEM_ABI_VERSION);
  CHECK(TANDEM_ABI_VERSION == 4);

  SECTION("valid overrides load") {
    const char* overrides = "qwen3moe.rope.freq_base=float:1000000, qwen3moe.attention.layer_norm_rms_epsilon=float:1e-6";
    INFO(tandem_last_error());
    REQUIRE(tandem_model_load_with_overrides(gguf.c_str(), &params, overrides, &model) == TANDEM_STATUS_OK);
    tandem_model_free(model);
    REQUIRE(tandem_model_load_with_overrides(gguf.c_str(), &params, nullptr, &model) == TANDEM_STATUS_OK);
    tandem_model_free(model);
  }
  SECTION("bad overrides give INVALID_ARGUMENT naming the problem") {
    const std::pair<const char*, const char*> cases[] = {
        {"qwen3moe.rope.freq_base=float:abc", "not a finite float"},
        {"qwen3moe.rope.freq_base", "no '='"},
        {"qwen3moe.rope.freq_base=double:1", "unknown type"},
        {"qwen3moe.rope.freq_base=int:5", "as float"},
        {"qwen3moe.not.a.key=int:5", "unknown override key"},
    };
    for (const auto& [spec, message] : cases) {
      INFO(spec);
      CHECK(tandem_model_load_with_overrides(gguf.c_str(), &params, spec, &model) == TANDEM_STATUS_INVALID_ARGUMENT);
      CHECK(model == nullptr);
      CHECK(std::string(tandem_last_error()).find(message) != std::string::npos);
    }
  }
}

TEST_CASE("C ABI: sessions generating on several threads give HF's greedy ids and their solo ids") {
  tandem_load_params load = tandem_load_default_params();
  load.threads = 2;
  load.max_sessions = 4;
  load.max_context_tokens = 256;
  tandem_model* raw_model = nullptr;
  REQUIRE(tandem_model_load(tiny_model_path().c_str(), &load, &raw_model) == TANDEM_STATUS_OK);
  ModelGuard model{raw_model};

  const auto run = [&](int index, std::vector<int32_t>& out, tandem_status& status) {
    const auto prompt_ids = manifest_generation(index)["prompt_ids"].get<std::vector<int32_t>>();
    const auto expected = manifest_generation(index)["greedy_ids"].get<std::vector<int32_t>>();
    tandem_session* session = nullptr;
    status = tandem_session_new(model.model, &session);
    if (status != TANDEM_STATUS_OK) return;
    tandem_generate_params params = tandem_generate_default_params();
    params.max_new_tokens = static_cast<int64_t>(expected.size());
    params.stop_at_eos = 0;
    out.assign(expected.size(), -1);
    size_t count = 0;
    status = tandem_session_generate(session, prompt_ids.data(), prompt_ids.size(), &params, out.data(), out.size(),
                                     &count, nullptr);
    out.resize(count);
    tandem_session_free(session);
  };
  std::vector<std::vector<int32_t>> alone(4), together(4);
  for (int i = 0; i < 4; ++i) {
    tandem_status status = TANDEM_STATUS_OK;
    run(i, alone[i], status);
    REQUIRE(status == TANDEM_STATUS_OK);
  }
  std::vector<tandem_status> statuses(4, TANDEM_STATUS_OK);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { run(i, together[i], statuses[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    INFO("generation " << i);
    CHECK(statuses[i] == TANDEM_STATUS_OK);
    CHECK(together[i] == alone[i]);
    CHECK(together[i] == manifest_generation(i)["greedy_ids"].get<std::vector<int32_t>>());
  }
}
