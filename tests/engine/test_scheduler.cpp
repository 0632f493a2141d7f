// The continuous-batching scheduler: several sequences of different lengths batched together give
// exactly the tokens each gives alone (greedy and seeded sampling), also when a small KV pool forces
// preemption and recomputation and a tiny token budget forces prompt chunking; cancellation, stop
// strings, limits, and every KV block returned at the end.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <map>
#include <mutex>

#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;

namespace {

std::unique_ptr<Engine> load(const std::string& name, int64_t sessions, int64_t context, int64_t block_tokens,
                             int64_t max_batch_tokens) {
  LoadOptions o;
  o.threads = 2;
  o.max_sessions = sessions;
  o.max_context_tokens = context;
  o.kv_block_tokens = block_tokens;
  o.max_batch_tokens = max_batch_tokens;
  return Engine::load(test::data_dir() + "/" + name, o);
}

std::vector<std::vector<int32_t>> prompts() {
  return {{51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280, 78, 87, 220, 73, 287},
          {13, 400, 17},
          {5,  311, 90, 211, 7,  99, 450, 3,  17, 18, 19, 20, 21,
           22, 23,  24, 25,  26, 27, 28,  29, 30, 31, 32, 33, 34},
          {300},
          {42, 43, 44, 45, 46, 47, 48}};
}

GenerateResult solo(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& sampling,
                    int64_t max_new_tokens) {
  auto session = engine.new_session();
  GenerateOptions options;
  options.sampling = sampling;
  options.max_new_tokens = max_new_tokens;
  return generate(*session, engine.tokenizer(), prompt, options);
}

struct Collected {
  std::mutex mutex;
  std::map<uint64_t, SequenceResult> results;
  std::map<uint64_t, std::string> streamed;
};

// Submits every prompt at once and waits for all of them.
std::vector<SequenceResult> run_batched(Scheduler& scheduler, const std::vector<std::vector<int32_t>>& ps,
                                        const std::vector<SamplingParams>& sampling, int64_t max_new_tokens,
                                        std::vector<std::string>* streamed = nullptr) {
  std::vector<std::promise<SequenceResult>> done(ps.size());
  std::vector<std::string> text(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    SequenceParams p;
    p.prompt = ps[i];
    p.sampling = sampling[i];
    p.max_new_tokens = max_new_tokens;
    p.skip_special_text = false;  // as generate() by default
    p.on_token = [&text, i](int32_t, std::string_view t) {
      text[i] += t;
      return true;
    };
    p.on_finish = [&done, i](const SequenceResult& r) { done[i].set_value(r); };
    scheduler.submit(std::move(p));
  }
  std::vector<SequenceResult> out;
  for (auto& d : done) out.push_back(d.get_future().get());
  if (streamed) *streamed = text;
  return out;
}

}  // namespace

TEST_CASE("scheduler: a latency histogram counts each observation in every bucket at or above it", "[scheduler]") {
  LatencyHistogram h;
  h.add(0.001);  // on a bound: counted in it
  h.add(0.003);
  h.add(100.0);  // past the last bound: +Inf only
  CHECK(h.count == 3);
  CHECK(h.sum == Approx(100.004));
  CHECK(h.buckets.size() == std::size(LatencyHistogram::kBounds) + 1);
  CHECK(h.buckets[0] == 1);                            // le 0.001
  CHECK(h.buckets[1] == 1);                            // le 0.0025
  CHECK(h.buckets[2] == 2);                            // le 0.005
  CHECK(h.buckets[std::size(LatencyHistogram::kBounds) - 1] == 2);  // le 60
  CHECK(h.buckets.back() == 3);                        // +Inf
}

TEST_CASE("scheduler: greedy batched outputs equal solo outputs", "[scheduler]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    INFO(name);
    auto engine = load(name, 6, 128, 4, 16);
    const auto ps = prompts();
    const SamplingParams greedy;
    std::vector<GenerateResult> alone;
    for (const auto& p : ps) alone.push_back(solo(*engine, p, greedy, 20));

    // Budget of 16 tokens a step: prompts go in chunks beside the others' decode tokens.
    Scheduler scheduler(*engine, engine->tokenizer(),
                        {.max_running = 5, .max_batch_tokens = 16, .max_waiting = 8});
    std::vector<std::string> streamed;
    const auto batched =
        run_batched(scheduler, ps, std::vector<SamplingParams>(ps.size(), greedy), 20, &streamed);
    for (size_t i = 0; i < ps.size(); ++i) {
      INFO("sequence " << i);
      CHECK(batched[i].ids == alone[i].ids);
      CHECK(batched[i].text == alone[i].text);
      CHECK(streamed[i] == alone[i].text);
      CHECK(batched[i].stop == StopReason::max_tokens);
      CHECK(batched[i].prompt_tokens == static_cast<int64_t>(ps[i].size()));
    }
    const auto stats = scheduler.stats();
    CHECK(stats.kv_blocks_in_use == 0);
    CHECK(stats.finished == 5);
    CHECK(stats.generated_tokens == 5 * 20);
    // Sequences really shared steps: fewer steps than running them one after another.
    int64_t serial_steps = 0;
    for (const auto& p : ps) serial_steps += (static_cast<int64_t>(p.size()) + 15) / 16 + 19;
    CHECK(stats.steps < serial_steps);
    CHECK(stats.step_seconds.count == stats.steps);
    CHECK(stats.step_seconds.buckets.back() == stats.steps);
    // A first token per sequence and an interval between each later pair of its tokens.
    CHECK(stats.first_token_seconds.count == 5);
    CHECK(stats.inter_token_seconds.count == 5 * 19);
    CHECK(stats.inter_token_seconds.buckets.back() == 5 * 19);
    CHECK(stats.first_token_seconds.sum > 0);
    for (const LatencyHistogram* h : {&stats.step_seconds, &stats.first_token_seconds, &stats.inter_token_seconds})
      CHECK(std::is_sorted(h->buckets.begin(), h->buckets.end()));  // cumulative
  }
}

TEST_CASE("scheduler: seeded sampling per sequence equals the same seed alone", "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 4, 128, 16, 64);
  const auto ps = prompts();
  std::vector<SamplingParams> sampling(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    sampling[i].temperature = 0.9f;
    sampling[i].top_p = 0.95f;
    sampling[i].seed = 1000 + i;
  }
  Scheduler scheduler(*engine, engine->tokenizer(),
                      {.max_running = 3, .max_batch_tokens = 64, .max_waiting = 8});
  const auto batched = run_batched(scheduler, ps, sampling, 16);
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("sequence " << i);
    CHECK(batched[i].ids == solo(*engine, ps[i], sampling[i], 16).ids);
  }
}

TEST_CASE("scheduler: a full KV pool preempts and recomputes, outputs unchanged", "[scheduler]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    INFO(name);
    // One session's worth of KV (64 tokens in blocks of 4) for five sequences of up to 26 + 30 tokens.
    auto engine = load(name, 1, 64, 4, 32);
    const auto ps = prompts();
    std::vector<GenerateResult> alone;
    for (const auto& p : ps) alone.push_back(solo(*engine, p, {}, 30));
    Scheduler scheduler(*engine, engine->tokenizer(),
                        {.max_running = 5, .max_batch_tokens = 32, .max_waiting = 8});
    const auto batched = run_batched(scheduler, ps, std::vector<SamplingParams>(ps.size()), 30);
    int64_t preemptions = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      INFO("sequence " << i);
      CHECK(batched[i].error.empty());
      CHECK(batched[i].ids == alone[i].ids);
      preemptions += batched[i].preemptions;
    }
    const auto stats = scheduler.stats();
    CHECK(preemptions > 0);
    CHECK(stats.preemptions == preemptions);
    CHECK(stats.kv_blocks_in_use == 0);
    CHECK(stats.prefilled_tokens > stats.prompt_tokens);  // recomputation ran
  }
}

TEST_CASE("scheduler: a preempted sequence leaves its blocks in the prefix cache, outputs unchanged",
          "[scheduler][prefix]") {
  // As above, with the prefix cache: a victim's full blocks are cached before they are released, so
  // a victim coming back adopts what no one needed meanwhile instead of recomputing it.
  LoadOptions o;
  o.threads = 2;
  o.max_sessions = 1;
  o.max_context_tokens = 64;
  o.kv_block_tokens = 4;
  o.max_batch_tokens = 32;
  auto plain = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  o.kv_prefix_cache = true;
  auto cached = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  const auto ps = prompts();
  std::vector<GenerateResult> alone;
  for (const auto& p : ps) alone.push_back(solo(*plain, p, {}, 30));
  const SchedulerOptions limits{.max_running = 5, .max_batch_tokens = 32, .max_waiting = 8};
  Scheduler scheduler(*cached, cached->tokenizer(), limits);
  const auto batched = run_batched(scheduler, ps, std::vector<SamplingParams>(ps.size()), 30);
  int64_t preemptions = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("sequence " << i);
    CHECK(batched[i].error.empty());
    CHECK(batched[i].ids == alone[i].ids);
    // Only the first admission's adoption is the prompt's cache hit (distinct prompts: none).
    CHECK(batched[i].cached_prompt_tokens == 0);
    preemptions += batched[i].preemptions;
  }
  const auto stats = scheduler.stats();
  CHECK(preemptions > 0);
  CHECK(stats.preemptions == preemptions);
  CHECK(stats.kv_blocks_in_use == 0);
  CHECK(stats.cached_prompt_tokens == 0);
}

TEST_CASE("scheduler: cancel stops one sequence and frees its blocks; the others go on", "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 2, 256, 16, 64);
  const auto ps = prompts();
  const auto alone = solo(*engine, ps[1], {}, 40);
  Scheduler scheduler(*engine, engine->tokenizer(),
                      {.max_running = 2, .max_batch_tokens = 64, .max_waiting = 8});

  std::promise<void> three_tokens, cancel_sent;
  std::promise<SequenceResult> long_done, short_done;
  int seen = 0;
  SequenceParams endless;
  endless.prompt = ps[0];
  endless.max_new_tokens = -1;  // until the context is full: only cancel stops it in time
  endless.on_token = [&](int32_t, std::string_view) {
    if (++seen == 3) {
      // The step loop waits here until the cancel is in, so a loaded machine that delays this
      // thread cannot let the sequence run on meanwhile.
      three_tokens.set_value();
      cancel_sent.get_future().wait();
    }
    return true;
  };
  endless.on_finish = [&](const SequenceResult& r) { long_done.set_value(r); };
  const uint64_t id = scheduler.submit(std::move(endless));
  SequenceParams other;
  other.prompt = ps[1];
  other.max_new_tokens = 40;
  other.on_finish = [&](const SequenceResult& r) { short_done.set_value(r); };
  scheduler.submit(std::move(other));

  three_tokens.get_future().wait();
  CHECK(scheduler.cancel(id));
  cancel_sent.set_value();
  const auto cancelled = long_done.get_future().get();
  CHECK(cancelled.stop == StopReason::cancelled);
  CHECK(cancelled.ids.size() == 3);  // cancelled at the end of the step that sampled the third
  const auto finished = short_done.get_future().get();
  CHECK(finished.ids == alone.ids);
  CHECK_FALSE(scheduler.cancel(id));  // gone
  CHECK(scheduler.stats().kv_blocks_in_use == 0);
  CHECK(scheduler.stats().cancelled == 1);
}

TEST_CASE("scheduler: a callback returning false, stop strings and the context limit end a sequence",
          "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 2, 40, 16, 64);
  const auto ps = prompts();
  const auto alone = solo(*engine, ps[0], {}, 12);
  REQUIRE(alone.text.size() > 4);
  Scheduler scheduler(*engine, engine->tokenizer(),
                      {.max_running = 2, .max_batch_tokens = 64, .max_waiting = 8});

  // A stop string taken from the middle of the solo text: the text ends right before it.
  const std::string stop = alone.text.substr(alone.text.size() / 2, 3);
  SequenceParams p;
  p.prompt = ps[0];
  p.max_new_tokens = 12;
  p.stop_strings = {stop};
  p.skip_special_text = false;
  std::promise<SequenceResult> done;
  p.on_finish = [&](const SequenceResult& r) { done.set_value(r); };
  scheduler.submit(std::move(p));
  const auto r = done.get_future().get();
  CHECK(r.stop == StopReason::stop_string);
  CHECK(r.text == alone.text.substr(0, alone.text.find(stop)));

  SequenceParams q;
  q.prompt = ps[0];
  q.max_new_tokens = 12;
  q.on_token = [](int32_t, std::string_view) { return false; };
  std::promise<SequenceResult> done_q;
  q.on_finish = [&](const SequenceResult& res) { done_q.set_value(res); };
  scheduler.submit(std::move(q));
  const auto rq = done_q.get_future().get();
  CHECK(rq.stop == StopReason::callback);
  CHECK(rq.ids.size() == 1);

  SequenceParams full;
  full.prompt = ps[2];  // 26 tokens of a 40-token context
  full.max_new_tokens = -1;
  std::promise<SequenceResult> done_full;
  full.on_finish = [&](const SequenceResult& res) { done_full.set_value(res); };
  scheduler.submit(std::move(full));
  const auto rf = done_full.get_future().get();
  CHECK(rf.stop == StopReason::context_full);
  CHECK(rf.ids.size() == 40 - 26 + 1);
  CHECK(scheduler.stats().kv_blocks_in_use == 0);
}

TEST_CASE("scheduler: bad sequences are refused at submit", "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 1, 32, 16, 64);
  Scheduler scheduler(*engine, engine->tokenizer(),
                      {.max_running = 1, .max_batch_tokens = 64, .max_waiting = 1});
  SequenceParams empty;
  CHECK_THROWS_AS(scheduler.submit(empty), Error);
  SequenceParams too_long;
  too_long.prompt.assign(33, 5);
  try {
    scheduler.submit(too_long);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::out_of_range);
  }
  SequenceParams bad_id;
  bad_id.prompt = {1, static_cast<int32_t>(engine->config().vocab_size)};
  CHECK_THROWS_AS(scheduler.submit(bad_id), Error);
  SequenceParams bad_sampling;
  bad_sampling.prompt = {1, 2};
  bad_sampling.sampling.top_p = 2.0f;
  CHECK_THROWS_AS(scheduler.submit(bad_sampling), Error);
  CHECK_THROWS_AS(Scheduler(*engine, nullptr, {.max_running = 1, .max_batch_tokens = 65, .max_waiting = 1}),
                  Error);
  CHECK(scheduler.stats().submitted == 0);
}

TEST_CASE("scheduler: shutting down cancels what is queued and running", "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 1, 256, 16, 64);
  std::vector<std::promise<SequenceResult>> done(3);
  {
    Scheduler scheduler(*engine, nullptr, {.max_running = 1, .max_batch_tokens = 64, .max_waiting = 8});
    for (size_t i = 0; i < done.size(); ++i) {
      SequenceParams p;
      p.prompt = {1, 2, 3};
      p.max_new_tokens = -1;
      p.on_finish = [&done, i](const SequenceResult& r) { done[i].set_value(r); };
      scheduler.submit(std::move(p));
    }
  }
  for (auto& d : done) {
    auto f = d.get_future();
    REQUIRE(f.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
    CHECK(f.get().stop == StopReason::cancelled);
  }
  CHECK(engine->kv_pool().free_blocks() == engine->kv_pool().spec().blocks);
}

TEST_CASE("scheduler: the queue limit counts waiting sequences past the free slots", "[scheduler]") {
  auto engine = load("tiny-qwen3moe", 1, 256, 16, 64);
  Scheduler scheduler(*engine, nullptr, {.max_running = 1, .max_batch_tokens = 64, .max_waiting = 1});
  std::vector<std::promise<SequenceResult>> done(2);
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < 2; ++i) {
    SequenceParams p;
    p.prompt = {1, 2, 3};
    p.max_new_tokens = -1;
    p.on_finish = [&done, i](const SequenceResult& r) { done[i].set_value(r); };
    ids.push_back(scheduler.submit(std::move(p)));  // one runs (or is about to), one waits
  }
  SequenceParams third;
  third.prompt = {1, 2, 3};
  try {
    scheduler.submit(third);
    FAIL("the third sequence was queued");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::out_of_memory);
  }
  for (uint64_t id : ids) scheduler.cancel(id);
  for (auto& d : done) CHECK(d.get_future().get().stop == StopReason::cancelled);
  CHECK(scheduler.stats().kv_blocks_in_use == 0);
  // With both gone, a slot is free again: no waiting room is needed.
  Scheduler no_queue(*engine, nullptr, {.max_running = 1, .max_batch_tokens = 64, .max_waiting = 0});
  std::promise<SequenceResult> ok;
  SequenceParams p;
  p.prompt = {1, 2, 3};
  p.max_new_tokens = 2;
  p.on_finish = [&](const SequenceResult& r) { ok.set_value(r); };
  no_queue.submit(std::move(p));
  CHECK(ok.get_future().get().ids.size() == 2);
}

TEST_CASE("scheduler: sequences adopt and fill the engine's prefix cache, outputs unchanged", "[scheduler][prefix]") {
  // A pool of 2 sequences x 64 tokens in 4-token blocks: cached blocks must give way to new ones.
  LoadOptions o;
  o.threads = 2;
  o.max_sessions = 2;
  o.max_context_tokens = 64;
  o.kv_block_tokens = 4;
  o.max_batch_tokens = 16;
  o.kv_prefix_cache = true;
  auto cached_engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  o.kv_prefix_cache = false;
  auto plain_engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);

  const auto base = prompts()[2];  // 26 tokens
  std::vector<std::vector<int32_t>> ps = {base, base, base};
  ps[1].back() = 400;                  // shares 24 tokens: 6 whole blocks
  ps[2].insert(ps[2].begin() + 10, 7);  // shares 10 tokens: 2 whole blocks
  const SamplingParams greedy;
  Scheduler scheduler(*cached_engine, cached_engine->tokenizer(),
                      {.max_running = 2, .max_batch_tokens = 16, .max_waiting = 8});
  std::vector<SequenceResult> got;
  for (const auto& p : ps) got.push_back(run_batched(scheduler, {p}, {greedy}, 20)[0]);
  CHECK(got[0].cached_prompt_tokens == 0);
  CHECK(got[1].cached_prompt_tokens == 24);
  CHECK(got[2].cached_prompt_tokens == 8);
  // A whole finished sequence (prompt and reply) is cached: the same prompt again adopts all but
  // its last token's block.
  const auto again = run_batched(scheduler, {base}, {greedy}, 20)[0];
  CHECK(again.cached_prompt_tokens == 24);
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("prompt " << i);
    CHECK(got[i].ids == solo(*plain_engine, ps[i], greedy, 20).ids);
  }
  CHECK(again.ids == got[0].ids);

  // Then more distinct prompts than the pool holds with everything cached: cached blocks give way
  // (no preemption, no failure), and outputs stay those of the engine without a cache.
  std::vector<std::vector<int32_t>> many;
  for (int32_t k = 0; k < 6; ++k) {
    std::vector<int32_t> p(30);
    for (int32_t i = 0; i < 30; ++i) p[static_cast<size_t>(i)] = 100 + 37 * k + i;
    many.push_back(p);
  }
  const auto batched = run_batched(scheduler, many, std::vector<SamplingParams>(many.size(), greedy), 20);
  for (size_t i = 0; i < many.size(); ++i) {
    INFO("prompt " << i);
    CHECK(batched[i].error.empty());
    CHECK(batched[i].ids == solo(*plain_engine, many[i], greedy, 20).ids);
  }
  const auto stats = scheduler.stats();
  CHECK(stats.preemptions == 0);
  CHECK(stats.kv_blocks_in_use == 0);
  CHECK(stats.kv_blocks_cached > 0);
  CHECK(stats.cached_prompt_tokens == 24 + 8 + 24);
}
