// The prefix cache: a new session adopts the longest cached prefix and gets the logits of a cold
// run (bit-identical to a cold run that prefills the same chunks: a kernel's rounding may depend
// on the batch, ~2e-7 of max|logit| between 18 rows at once and 16 + 2); sessions sharing blocks
// and then diverging stay independent (copy-on-write); unreferenced cached blocks are freed least
// recently used first, deepest first.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/prefix_cache.hpp"

using namespace tandem;

namespace {

const std::vector<int32_t> kPrompt = {51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280, 78, 87, 220, 73, 287, 9};

std::unique_ptr<Engine> load(const std::string& name, KvType type, bool cache, int64_t sessions = 4,
                             int64_t ctx = 64) {
  LoadOptions o;
  o.max_context_tokens = ctx;
  o.max_sessions = sessions;
  o.kv_block_tokens = 4;
  o.kv_type = type;
  o.kv_prefix_cache = cache;
  o.load_tokenizer = false;
  return Engine::load(test::data_dir() + "/" + name, o);
}

std::vector<float> logits_of(Session& s) { return {s.logits().begin(), s.logits().end()}; }

}  // namespace

TEST_CASE("Prefix cache: a hit gives the cold run's logits; diverging sessions stay independent",
          "[engine][kv][prefix]") {
  // The trained Qwen3-MoE's rows (2 KV heads of 64) have int4:64's groups of 64; the tiny models'
  // rows of 32 values fall back to groups of 32. (Its Q4_K_M kernels round differently for c's
  // chunks than for c_cold's, 7e-3 of max|logit| with an f32 cache, so f32 is the tiny models' alone.)
  const std::string trained = "trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  for (const std::string& name : {std::string("tiny-qwen3moe"), std::string("tiny-deepseekv3"), trained}) {
    for (const KvType type : {KvType::f32, KvType::int4, KvType::int4_g64}) {
      if (name == trained && type == KvType::f32) continue;
      INFO(name << " " << kv_type_name(type));
      auto cold_engine = load(name, type, false);
      const auto in_two = [](Session& s, std::span<const int32_t> ids) {
        s.prefill(ids.first(16));
        s.prefill(ids.subspan(16));
      };
      auto cold = cold_engine->new_session();
      in_two(*cold, kPrompt);
      const std::vector<float> cold_logits = logits_of(*cold);

      auto engine = load(name, type, true);
      auto a = engine->new_session();
      in_two(*a, kPrompt);
      CHECK(a->cached_prompt_tokens() == 0);
      CHECK(logits_of(*a) == cold_logits);
      auto b = engine->new_session();
      b->prefill(kPrompt);
      CHECK(b->cached_prompt_tokens() == 16);  // four full blocks of the 17 before the last token
      CHECK(b->position() == static_cast<int64_t>(kPrompt.size()));
      CHECK(logits_of(*b) == cold_logits);

      // a and b go different ways; c shares 10 tokens then rewrites inside a shared block.
      auto c = engine->new_session();
      c->prefill(std::span<const int32_t>(kPrompt).first(13));
      CHECK(c->cached_prompt_tokens() == 12);
      c->truncate(10);
      const std::vector<int32_t> c_tail = {5, 6, 7, 8, 9};
      c->prefill(c_tail);
      for (int i = 0; i < 6; ++i) {
        a->decode(static_cast<int32_t>(100 + i));
        b->decode(static_cast<int32_t>(200 + i));
        cold->decode(static_cast<int32_t>(100 + i));
      }
      CHECK(logits_of(*a) == logits_of(*cold));
      auto b_cold = cold_engine->new_session();
      std::vector<int32_t> b_all = kPrompt;
      for (int i = 0; i < 6; ++i) b_all.push_back(200 + i);
      in_two(*b_cold, std::span<const int32_t>(b_all).first(kPrompt.size()));
      for (int i = 0; i < 6; ++i) b_cold->decode(static_cast<int32_t>(200 + i));
      CHECK(logits_of(*b) == logits_of(*b_cold));
      auto c_cold = cold_engine->new_session();
      std::vector<int32_t> c_all(kPrompt.begin(), kPrompt.begin() + 10);
      c_all.insert(c_all.end(), c_tail.begin(), c_tail.end());
      c_cold->prefill(c_all);
      // int4: the reopened block 2 (positions 8..11) is sealed again from its dequantised rows.
      CHECK(test::relative_max_error(logits_of(*c), logits_of(*c_cold)) <= (type == KvType::f32 ? 1e-6 : 0.05));
    }
  }
}

TEST_CASE("Prefix cache: generate reports cached prompt tokens; all-logits prefills bypass it", "[engine][kv][prefix]") {
  auto engine = load("tiny-qwen3moe", KvType::f32, true);
  GenerateOptions options;
  options.sampling.temperature = 0;
  options.max_new_tokens = 4;
  auto first = engine->new_session();
  const auto cold = generate(*first, nullptr, kPrompt, options);
  CHECK(cold.stats.cached_prompt_tokens == 0);
  CHECK(cold.stats.prefilled_tokens == static_cast<int64_t>(kPrompt.size()));
  first.reset();
  auto second = engine->new_session();
  const auto warm = generate(*second, nullptr, kPrompt, options);
  CHECK(warm.stats.cached_prompt_tokens == 16);
  CHECK(warm.stats.prefilled_tokens == static_cast<int64_t>(kPrompt.size()) - 16);
  CHECK(warm.ids == cold.ids);
  auto third = engine->new_session();
  third->prefill(kPrompt, /*all_logits=*/true);
  CHECK(third->cached_prompt_tokens() == 0);
}

TEST_CASE("Prefix cache: unreferenced blocks give way, least recently used and deepest first", "[kv][prefix]") {
  KvPoolSpec spec;
  spec.layers = 1;
  spec.values_per_token = 8;
  spec.block_tokens = 4;
  spec.blocks = 6;
  spec.dtype = KvType::f32;
  KvPool pool(spec);
  PrefixCache cache(pool);
  const std::vector<int32_t> one = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, two = {1, 2, 3, 4, 7, 7, 7, 7};
  const auto keys_one = cache.block_keys(one), keys_two = cache.block_keys(two);
  REQUIRE(keys_one.size() == 3);
  CHECK(keys_two[0] == keys_one[0]);  // same first block, same key
  CHECK(keys_two[1] != keys_one[1]);
  CHECK(cache.block_keys(std::span<const int32_t>(one).first(11)).size() == 2);
  {
    BlockTable t;
    t.reserve(pool, 12);
    cache.insert(keys_one, t.blocks());
    t.release(pool);
  }
  CHECK(cache.cached_blocks() == 3);
  CHECK(pool.free_blocks() == 3);
  {
    // two adopts the shared first block and adds its own second one.
    BlockTable t;
    for (const int32_t b : cache.adopt(keys_two)) t.adopt(pool, b);
    CHECK(t.blocks().size() == 1);
    t.reserve(pool, 8);
    cache.insert(keys_two, t.blocks());
    CHECK(cache.cached_blocks() == 4);
    // While t holds its blocks they cannot be freed: asking for 6 frees one's two deeper blocks.
    cache.make_room(6);
    CHECK(cache.cached_blocks() == 2);
    CHECK(pool.free_blocks() == 4);
    t.release(pool);
  }
  const auto release_all = [&](const std::vector<int32_t>& blocks) {
    for (const int32_t b : blocks) pool.release_block(b);
  };
  const auto one_left = cache.adopt(keys_one);
  CHECK(one_left.size() == 1);  // one's chain was trimmed from the end
  release_all(one_left);
  const auto two_held = cache.adopt(keys_two);
  CHECK(two_held.size() == 2);
  release_all(two_held);
  CHECK(pool.free_blocks() == 4);
  cache.make_room(5);  // one block: two's deepest block goes first
  CHECK(cache.cached_blocks() == 1);
  const auto left = cache.adopt(keys_two);
  CHECK(left.size() == 1);
  release_all(left);
}
