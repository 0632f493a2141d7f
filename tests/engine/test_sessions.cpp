// Paged KV cache and sessions: prefill + step-by-step decode equals one full pass (GQA and MLA,
// across block boundaries, with prompt chunking), sessions sharing a pool, a batch of two
// sequences in one forward, sessions on several threads sharing the engine scheduler's steps (their
// tokens equal to each alone), and the limits' errors.
#include <atomic>
#include <catch2/catch.hpp>
#include <latch>
#include <numeric>
#include <thread>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;

namespace {

const std::vector<int32_t> kPromptA = {51, 261, 220, 80, 84, 72,  481, 263, 304,
                                       86, 77,  280, 78, 87, 220, 73,  287};
const std::vector<int32_t> kPromptB = {13, 400, 17, 5, 311, 90, 211, 7, 99, 450, 3};

std::vector<float> full_pass(Engine& engine, const std::vector<int32_t>& ids) {
  auto s = engine.new_session();
  s->prefill(ids, true);
  return {s->all_logits().begin(), s->all_logits().end()};
}

void check_rows_equal(std::span<const float> got, std::span<const float> expected, double tolerance) {
  const double rel = test::relative_max_error(got, expected);
  INFO("relative max error " << rel);
  CHECK(rel <= tolerance);
}

}  // namespace

TEST_CASE("prefill then decode equals one full pass across KV block boundaries", "[engine][kv]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const std::string dir = test::data_dir() + "/" + name;
    auto reference_engine = test::load_for_test(dir, 16, 512);
    const auto reference = full_pass(*reference_engine, kPromptA);
    const int64_t vocab = reference_engine->config().vocab_size;

    // Blocks of 4 tokens and chunks of 3: every block boundary and chunk boundary is crossed.
    auto engine = test::load_for_test(dir, 4, 3);
    auto session = engine->new_session();
    const size_t k = 6;
    session->prefill(std::span(kPromptA).first(k), true);
    INFO(name);
    check_rows_equal(session->all_logits(), std::span(reference).first(k * static_cast<size_t>(vocab)), 1e-5);
    for (size_t i = k; i < kPromptA.size(); ++i) {
      session->decode(kPromptA[i]);
      INFO("decode at position " << i);
      check_rows_equal(
          session->logits(),
          std::span(reference).subspan(i * static_cast<size_t>(vocab), static_cast<size_t>(vocab)), 1e-5);
    }
    CHECK(session->position() == static_cast<int64_t>(kPromptA.size()));
    CHECK(session->tokens() == kPromptA);
  }
}

TEST_CASE("two sessions interleaved in one pool equal each alone", "[engine][kv]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    auto engine = test::load_for_test(test::data_dir() + "/" + name, 4, 512);
    const auto alone_a = full_pass(*engine, kPromptA);
    const auto alone_b = full_pass(*engine, kPromptB);
    const auto vocab = static_cast<size_t>(engine->config().vocab_size);
    auto a = engine->new_session();
    auto b = engine->new_session();
    a->prefill(std::span(kPromptA).first(3));
    b->prefill(std::span(kPromptB).first(5));
    size_t ia = 3, ib = 5;
    while (ia < kPromptA.size() || ib < kPromptB.size()) {
      if (ia < kPromptA.size()) {
        a->decode(kPromptA[ia]);
        check_rows_equal(a->logits(), std::span(alone_a).subspan(ia * vocab, vocab), 1e-5);
        ++ia;
      }
      if (ib < kPromptB.size()) {
        b->decode(kPromptB[ib]);
        check_rows_equal(b->logits(), std::span(alone_b).subspan(ib * vocab, vocab), 1e-5);
        ++ib;
      }
    }
    // reset() frees the blocks and starts over at position 0.
    a->reset();
    CHECK(a->position() == 0);
    a->prefill(kPromptB, true);
    check_rows_equal(a->all_logits(), alone_b, 1e-6);
  }
}

TEST_CASE("a batch of two sequences in one forward equals each run alone", "[engine][kv][batch]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const ModelFiles files = open_model_files(test::data_dir() + "/" + name);
    const Weights weights = bind_weights(files);
    const ModelConfig& c = files.config;
    auto backend = make_cpu_backend(2);
    KvPool kv({c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa, c.num_layers,
               c.kv_values_per_token_per_layer(), 4, 32, Device::cpu()});
    ForwardPass forward(c, weights, *backend, kv, 64);
    const auto vocab = static_cast<size_t>(c.vocab_size);

    auto run_alone = [&](const std::vector<int32_t>& ids) {
      BlockTable table;
      table.reserve(kv, static_cast<int64_t>(ids.size()));
      std::vector<float> logits(ids.size() * vocab);
      const SequenceChunk chunk{ids, 0, &table, true};
      forward.run({&chunk, 1}, logits.data());
      table.release(kv);
      return logits;
    };
    const auto alone_a = run_alone(kPromptA);
    const auto alone_b = run_alone(kPromptB);

    // A prefills its first 10 tokens alone; then one forward carries A's remaining tokens (a
    // continuing chunk) and all of B (a fresh prompt).
    BlockTable ta, tb;
    ta.reserve(kv, static_cast<int64_t>(kPromptA.size()));
    tb.reserve(kv, static_cast<int64_t>(kPromptB.size()));
    std::vector<float> first(10 * vocab);
    const SequenceChunk head{std::span(kPromptA).first(10), 0, &ta, true};
    forward.run({&head, 1}, first.data());
    const SequenceChunk batch[2] = {{std::span(kPromptA).subspan(10), 10, &ta, true},
                                    {kPromptB, 0, &tb, false}};
    REQUIRE(ForwardPass::logits_rows(batch) == static_cast<int64_t>(kPromptA.size() - 10 + 1));
    std::vector<float> out(static_cast<size_t>(ForwardPass::logits_rows(batch)) * vocab);
    forward.run(batch, out.data());
    INFO(name);
    check_rows_equal(first, std::span(alone_a).first(10 * vocab), 1e-5);
    check_rows_equal(std::span(out).first((kPromptA.size() - 10) * vocab),
                     std::span(alone_a).subspan(10 * vocab), 1e-5);
    check_rows_equal(std::span(out).last(vocab), std::span(alone_b).last(vocab), 1e-5);
  }
}

TEST_CASE("limits give typed errors", "[engine][kv][errors]") {
  SECTION("KV pool exhaustion is out_of_memory and leaves the table as it was") {
    KvPool pool({KvLayout::gqa, 2, 8, 4, 3, Device::cpu()});
    BlockTable t;
    t.reserve(pool, 8);
    CHECK(pool.free_blocks() == 1);
    try {
      t.reserve(pool, 20);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::out_of_memory);
    }
    CHECK(t.blocks().size() == 2);
    CHECK(pool.free_blocks() == 1);
    t.release(pool);
    CHECK(pool.free_blocks() == 3);
  }
  SECTION("sessions, context, ids, cancellation") {
    LoadOptions options;
    options.max_context_tokens = 12;
    options.max_sessions = 2;
    options.kv_block_tokens = 4;
    options.load_tokenizer = false;
    auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", options);
    auto s1 = engine->new_session();
    auto s2 = engine->new_session();
    try {
      (void)engine->new_session();
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::out_of_memory);
    }
    s1->prefill(std::span(kPromptA).first(10));
    try {
      s1->prefill(std::span(kPromptA).subspan(10, 3));
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::out_of_range);
    }
    CHECK(s1->position() == 10);
    const int32_t bad[] = {1, 512};
    try {
      s2->prefill(bad);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::invalid_argument);
    }
    s2->cancel();
    try {
      s2->prefill(kPromptB);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::cancelled);
    }
    CHECK(s2->position() == 0);
    s2->prefill(kPromptB);  // the cancel request was consumed
    CHECK(s2->position() == static_cast<int64_t>(kPromptB.size()));
    // A closed session gives its slot and blocks back.
    s1.reset();
    auto s3 = engine->new_session();
    s3->prefill(std::span(kPromptA).first(12));
    CHECK(s3->position() == 12);
  }
  SECTION("bad load options") {
    LoadOptions options;
    options.kv_block_tokens = 0;
    CHECK_THROWS_AS(Engine::load(test::data_dir() + "/tiny-qwen3moe", options), Error);
    options = LoadOptions{};
    options.max_context_tokens = -3;
    CHECK_THROWS_AS(Engine::load(test::data_dir() + "/tiny-qwen3moe", options), Error);
    options.max_context_tokens = int64_t{1} << 30;
    CHECK_THROWS_WITH(Engine::load(test::data_dir() + "/tiny-qwen3moe", options),
                      Catch::Contains("-c/--ctx") && Catch::Contains("1073741824"));
    options = LoadOptions{};
    options.stream_experts_min_tokens = -2;  // -1 is automatic, 0 never
    CHECK_THROWS_WITH(Engine::load(test::data_dir() + "/tiny-qwen3moe", options),
                      Catch::Contains("stream_experts_min_tokens -2"));
    options = LoadOptions{};
    options.max_batch_tokens = -1;  // 0 is automatic
    CHECK_THROWS_WITH(Engine::load(test::data_dir() + "/tiny-qwen3moe", options),
                      Catch::Contains("max_batch_tokens must be positive, got -1"));
  }
  SECTION("max_batch_tokens 0 (automatic) is 512 tokens on the CPU, at most the context") {
    LoadOptions options;
    options.load_tokenizer = false;
    REQUIRE(options.max_batch_tokens == LoadOptions::kBatchTokensAutomatic);
    options.max_context_tokens = 1024;
    CHECK(Engine::load(test::data_dir() + "/tiny-qwen3moe", options)->options().max_batch_tokens ==
          LoadOptions::kDefaultBatchTokens);
    options.max_context_tokens = 100;
    CHECK(Engine::load(test::data_dir() + "/tiny-qwen3moe", options)->options().max_batch_tokens == 100);
  }
  SECTION("max_context_tokens 0 takes the model's trained context, at most 4096") {
    LoadOptions options;
    options.max_context_tokens = 0;
    options.max_sessions = 1;
    options.load_tokenizer = false;
    auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", options);
    REQUIRE(engine->config().max_position_embeddings == 1024);
    CHECK(engine->options().max_context_tokens == 1024);
    auto bundled = Engine::load(test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf", options);
    CHECK(bundled->options().max_context_tokens == std::min<int64_t>(4096, bundled->config().max_position_embeddings));
  }
}

TEST_CASE("engine reports where memory went and loads with progress", "[engine]") {
  LoadOptions options;
  options.max_context_tokens = 64;
  options.max_sessions = 1;
  std::vector<float> fractions;
  options.progress = [&](float f, std::string_view) { fractions.push_back(f); };
  auto engine = Engine::load(test::data_dir() + "/tiny-deepseekv3", options);
  REQUIRE(!fractions.empty());
  CHECK(fractions.back() == 1.0f);
  CHECK(std::is_sorted(fractions.begin(), fractions.end()));
  const MemoryReport report = engine->memory_report();
  const ModelConfig& c = engine->config();
  uint64_t experts = 0, kv = 0;
  for (const auto& line : report.lines) {
    if (line.what == "routed experts") experts = line.bytes;
    if (line.what == "KV pool") kv = line.bytes;
  }
  // Independent counts from the config: F32 routed experts of the MoE layers; KV latent + rope key.
  const int64_t moe_layers = c.num_layers - c.first_k_dense;
  CHECK(experts ==
        static_cast<uint64_t>(moe_layers * c.num_experts * 3 * c.moe_intermediate_size * c.hidden_size * 4));
  // The default KV type is f16: two bytes a value.
  CHECK(kv == static_cast<uint64_t>(c.num_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 64 * 2));
  for (const KvType type : {KvType::f32, KvType::bf16}) {
    LoadOptions typed = options;
    typed.progress = nullptr;
    typed.kv_type = type;
    const MemoryReport typed_report = Engine::load(test::data_dir() + "/tiny-deepseekv3", typed)->memory_report();
    uint64_t typed_kv = 0;
    for (const auto& line : typed_report.lines)
      if (line.what == "KV pool") typed_kv = line.bytes;
    CHECK(typed_kv == static_cast<uint64_t>(c.num_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 64) *
                          kv_type_bytes(type));
  }
  std::atomic<bool> cancel{true};
  options.cancel = &cancel;
  try {
    (void)Engine::load(test::data_dir() + "/tiny-deepseekv3", options);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::cancelled);
  }
}

namespace {

// Generates from each prompt on its own thread, all started together.
std::vector<GenerateResult> generate_concurrently(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                                  int64_t max_new_tokens) {
  std::vector<GenerateResult> results(prompts.size());
  std::vector<std::string> errors(prompts.size());
  std::latch start(static_cast<std::ptrdiff_t>(prompts.size()));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      try {
        auto session = engine.new_session();
        GenerateOptions options;
        options.max_new_tokens = max_new_tokens;
        start.arrive_and_wait();
        results[i] = generate(*session, engine.tokenizer(), prompts[i], options);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) CHECK(e.empty());
  return results;
}

}  // namespace

TEST_CASE("sessions on several threads share scheduler steps and give their solo tokens",
          "[engine][kv][batch][sessions]") {
  struct Case {
    std::string path;
    bool text_prompts;
  };
  for (const Case& c : {Case{test::data_dir() + "/tiny-qwen3moe", false}, Case{test::data_dir() + "/tiny-deepseekv3", false},
                        Case{test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf", true}}) {
    INFO(c.path);
    LoadOptions o;
    o.threads = 2;
    o.max_sessions = 4;
    o.max_context_tokens = 256;
    o.max_batch_tokens = 64;
    auto engine = Engine::load(c.path, o);
    std::vector<std::vector<int32_t>> prompts = {kPromptA, kPromptB, {300, 7, 9}, {42, 43, 44, 45, 46, 47, 48}};
    if (c.text_prompts) {
      REQUIRE(engine->tokenizer() != nullptr);
      prompts.clear();
      for (const char* text : {"Once upon a time, there was a little girl named", "The cat sat on the",
                               "Tom and Lily went to the park. They saw a big", "One day, a bird"})
        prompts.push_back(engine->tokenizer()->encode(text));
    }
    const int64_t new_tokens = 16;
    std::vector<GenerateResult> alone;
    for (const auto& p : prompts) alone.push_back(generate_concurrently(*engine, {p}, new_tokens)[0]);
    const SchedulerStats before = engine->scheduler().stats();
    CHECK(before.batched_steps == 0);  // one session at a time never shares a step

    const auto together = generate_concurrently(*engine, prompts, new_tokens);
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i);
      CHECK(together[i].ids == alone[i].ids);
      CHECK(together[i].text == alone[i].text);
      CHECK(static_cast<int64_t>(together[i].ids.size()) == new_tokens);
    }
    const SchedulerStats after = engine->scheduler().stats();
    INFO("steps " << after.steps - before.steps << ", batched " << after.batched_steps);
    CHECK(after.batched_steps > 0);
    // Sharing steps takes fewer of them than the sessions ran alone.
    CHECK(after.steps - before.steps < before.steps);
    CHECK(after.session_chunks - before.session_chunks == before.session_chunks);
    CHECK(after.kv_blocks_in_use == 0);
  }
}

TEST_CASE("a session's cancel stops it while other sessions share its steps", "[engine][kv][batch][sessions]") {
  LoadOptions o;
  o.threads = 2;
  o.max_sessions = 2;
  o.max_context_tokens = 256;
  auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  auto reference = engine->new_session();
  GenerateOptions options;
  options.max_new_tokens = 40;
  const GenerateResult expected = generate(*reference, engine->tokenizer(), kPromptB, options);
  reference.reset();

  auto cancelled_session = engine->new_session();
  std::atomic<bool> started{false};
  GenerateResult other;
  std::thread runner([&] {
    auto session = engine->new_session();
    started.store(true);
    other = generate(*session, engine->tokenizer(), kPromptB, options);
  });
  while (!started.load()) std::this_thread::yield();
  GenerateOptions until_cancelled;
  until_cancelled.max_new_tokens = 200;
  int64_t seen = 0;
  const GenerateResult stopped =
      generate(*cancelled_session, engine->tokenizer(), kPromptA, until_cancelled, [&](int32_t, std::string_view) {
        if (++seen == 5) cancelled_session->cancel();
        return true;
      });
  runner.join();
  CHECK(stopped.stop == StopReason::cancelled);
  CHECK(stopped.ids.size() == 5);
  CHECK(other.ids == expected.ids);
  // The cancelled session is usable again: the same prompt gives the reference's first tokens.
  GenerateOptions five;
  five.max_new_tokens = 5;
  CHECK(generate(*cancelled_session, engine->tokenizer(), kPromptA, five).ids == stopped.ids);
  cancelled_session.reset();
  CHECK(engine->scheduler().stats().kv_blocks_in_use == 0);
}
