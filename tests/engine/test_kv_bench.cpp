// `tandem bench kv`: the prefill FLOP count behind the speed-up limit, and a run on a tiny model.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"
#include "tandem/engine/bench/kv_bench.hpp"
#include "tandem/error.hpp"

using namespace tandem;

TEST_CASE("prefill_flops counts projections, MLP and attention pairs", "[kv][bench]") {
  ModelConfig c;
  c.attention = AttentionKind::gqa;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 16;
  c.num_experts = 0;  // dense layers
  REQUIRE_FALSE(c.is_moe_layer(0));
  // Per token and layer: q and o 2·8·8, k and v 2·8·4, MLP 3·8·16 = 128 + 64 + 384 = 576 MACs;
  // per (query, key) pair and layer 2·2·4 = 16 MACs. Three tokens: pairs 1 + 2 + 3 = 6.
  CHECK(prefill_flops(c, 0, 3) == Approx(2.0 * (576 * 2 * 3 + 16 * 2 * 6)));
  CHECK(prefill_flops(c, 0, 100) == Approx(prefill_flops(c, 0, 60) + prefill_flops(c, 60, 100)));
  // A MoE layer: router 8·4 and top-1 expert 3·8·4 instead of the dense MLP.
  c.num_experts = 4;
  c.num_experts_per_tok = 1;
  c.moe_intermediate_size = 4;
  REQUIRE(c.is_moe_layer(1));
  CHECK(prefill_flops(c, 0, 1) == Approx(2.0 * ((192 + 32 + 96) * 2 + 16 * 2)));
}

TEST_CASE("bench kv runs cold and with a cached prefix", "[engine][kv][bench]") {
  KvBenchOptions o;
  o.model_path = test::data_dir() + "/tiny-qwen3moe";
  o.prompt_tokens = 40;
  o.cached_tokens = 35;  // rounded down to 32
  o.decode_tokens = 2;
  o.reps = 2;
  o.threads = 1;
  const KvBenchResult r = run_kv_bench(o);
  CHECK(r.cached_tokens == 32);
  CHECK(r.ttft_cold_s > 0);
  CHECK(r.ttft_host_s > 0);
  CHECK(r.ttft_disk_s > 0);
  CHECK(r.decode_tok_s_disk > 0);
  CHECK(!r.disk_fs.empty());
  CHECK(!r.disk_io.empty());
  CHECK(r.disk_page_cache_resident >= 0);
  CHECK(r.disk_page_cache_resident <= 1);
  CHECK(r.decode_tok_s_cold > 0);
  CHECK(r.decode_tok_s_host > 0);
  CHECK(r.speedup_limit > 40.0 / 8 * 0.9);
  o.cached_tokens = 40;
  CHECK_THROWS_AS(run_kv_bench(o), Error);
  o.cached_tokens = 0;
  o.reps = 0;
  CHECK_THROWS_AS(run_kv_bench(o), Error);
}
