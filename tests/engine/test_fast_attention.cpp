// The CPU's flash attention for GQA and MLA (backend/cpu/fast_attention.cpp, one key block at a time
// with an online softmax) against the reference attention (backend/cpu/reference/attention.cpp) on the same cache:
// every KV type, every ISA build this CPU runs, head widths 16–256, query groups 1–16, prompt chunks
// after a cached prefix (key blocks cut mid-block, several tokens per item) and decode batches of
// separate sequences.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/fast_attention.hpp"
#include "backend/cpu/kernels/isa_level.hpp"
#include "tandem/backend/cpu/reference/attention.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/kv_type.hpp"

using namespace tandem;

namespace {

std::vector<float> normal_values(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// Sequences in one pool: each a BlockTable filled with `length` random K/V rows on layer 1.
struct Cache {
  KvPool pool;
  std::vector<BlockTable> tables;
  // GQA: `width` values per key and per value row; MLA: one latent row of `width` values.
  Cache(KvType type, int64_t width, const std::vector<int64_t>& lengths, uint32_t seed,
        KvLayout layout = KvLayout::gqa)
      : pool([&] {
          KvPoolSpec s;
          s.layout = layout;
          s.layers = 2;
          s.values_per_token = layout == KvLayout::gqa ? 2 * width : width;
          s.block_tokens = 16;
          s.blocks = 64;
          s.dtype = type;
          return s;
        }()),
        tables(lengths.size()) {
    for (size_t i = 0; i < lengths.size(); ++i) {
      tables[i].reserve(pool, lengths[i]);
      for (int64_t p = 0; p < lengths[i]; ++p)
        for (int64_t plane = 0; plane < (layout == KvLayout::gqa ? 2 : 1); ++plane) {
          // Keys with a few large channels, as real ones have; values plain.
          std::vector<float> row = normal_values(width, seed++, 1.0f);
          if (plane == 0)
            for (int64_t c = 3; c < width; c += 11) row[static_cast<size_t>(c)] *= 8.0f;
          tables[i].write_row(pool, 1, plane, p, row.data());
        }
    }
  }
  ~Cache() {
    for (BlockTable& t : tables) t.release(pool);
  }
};

// The flat tables the forward pass hands to a backend: token k of sequence seq[k] at positions[k].
struct Batch {
  std::vector<int32_t> blocks, open;
  std::vector<int64_t> positions;
  AttentionBatch batch;
  Batch(const Cache& cache, const std::vector<int>& seq, std::vector<int64_t> pos, bool one_sequence)
      : positions(std::move(pos)) {
    int64_t stride = 0;
    for (const BlockTable& t : cache.tables) stride = std::max<int64_t>(stride, static_cast<int64_t>(t.blocks().size()));
    for (int s : seq) {
      const BlockTable& t = cache.tables[static_cast<size_t>(s)];
      std::vector<int32_t> row(t.blocks().begin(), t.blocks().end());
      row.resize(static_cast<size_t>(stride), -1);
      blocks.insert(blocks.end(), row.begin(), row.end());
      open.push_back(t.open_rows());
    }
    batch.tokens = static_cast<int64_t>(seq.size());
    batch.positions = positions.data();
    batch.block_tables = blocks.data();
    batch.table_stride = stride;
    batch.open_rows = open.data();
    batch.one_sequence = one_sequence;
  }
};

// Float32 sums in another order than the reference's: differences of a few ulp of the largest output
// (measured ≤ 9.3e-7 of it; a wrong mask, scale or merge is off by far more).
void check_close(const std::vector<float>& got, const std::vector<float>& want) {
  double worst = 0, largest = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    worst = std::max(worst, std::fabs(static_cast<double>(got[k]) - want[k]));
    largest = std::max(largest, std::fabs(static_cast<double>(want[k])));
  }
  INFO("worst difference " << worst << ", largest output " << largest);
  CHECK(worst <= 4e-6 * largest);
}

// min_split_keys: CpuFlashAttention's, lowered to make short decode contexts split their keys.
void compare(ThreadPool& threads, const Cache& cache, const Batch& b, int64_t heads, int64_t kv_heads,
             int64_t head_dim, int64_t min_split_keys = CpuFlashAttention::kMinSplitKeys) {
  REQUIRE(fast_gqa_attention_supports(b.batch, heads, kv_heads, head_dim));
  const int64_t n = b.batch.tokens * heads * head_dim;
  const std::vector<float> q = normal_values(n, 7, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> want(static_cast<size_t>(n));
  gqa_attention(threads, cache.pool, 1, b.batch, q.data(), heads, kv_heads, head_dim, scale, want.data());
  for (kernels::IsaLevel level : {kernels::IsaLevel::scalar, kernels::IsaLevel::avx2, kernels::IsaLevel::avx512}) {
    if (!kernels::isa_level_supported(level)) continue;
    INFO("isa " << kernels::isa_level_name(level));
    for (const bool share : {true, false}) {  // a prompt chunk's keys widened once, or by each item
      INFO("prompt keys shared " << share);
      std::vector<float> got(static_cast<size_t>(n), std::nanf(""));
      CpuFlashAttention flash(threads, level);
      flash.set_min_split_keys(min_split_keys);
      flash.set_share_prompt_keys(share);
      flash.gqa(cache.pool, 1, b.batch, q.data(), heads, kv_heads, head_dim, scale, got.data());
      check_close(got, want);
    }
  }
}

void compare_mla(ThreadPool& threads, const Cache& cache, const Batch& b, int64_t heads, int64_t kv_lora,
                 int64_t rope, int64_t min_split_keys = CpuFlashAttention::kMinSplitKeys) {
  REQUIRE(fast_mla_attention_supports(b.batch, heads, kv_lora));
  const int64_t rows = b.batch.tokens * heads;
  const std::vector<float> q_latent = normal_values(rows * kv_lora, 8, 0.3f), q_rope = normal_values(rows * rope, 9, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kv_lora / 4 + rope));
  std::vector<float> want(static_cast<size_t>(rows * kv_lora));
  mla_attention(threads, cache.pool, 1, b.batch, q_latent.data(), q_rope.data(), heads, kv_lora, rope, scale,
                want.data());
  for (kernels::IsaLevel level : {kernels::IsaLevel::scalar, kernels::IsaLevel::avx2, kernels::IsaLevel::avx512}) {
    if (!kernels::isa_level_supported(level)) continue;
    INFO("isa " << kernels::isa_level_name(level));
    for (const bool share : {true, false}) {
      INFO("prompt keys shared " << share);
      std::vector<float> got(want.size(), std::nanf(""));
      CpuFlashAttention flash(threads, level);
      flash.set_min_split_keys(min_split_keys);
      flash.set_share_prompt_keys(share);
      flash.mla(cache.pool, 1, b.batch, q_latent.data(), q_rope.data(), heads, kv_lora, rope, scale, got.data());
      check_close(got, want);
    }
  }
}

}  // namespace

TEST_CASE("CPU flash attention equals the reference: every KV type, prompt chunks after a prefix",
          "[fast_attention]") {
  ThreadPool threads(3);
  for (const KvType type :
       {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8, KvType::int4, KvType::int4_g64}) {
    for (const auto& [heads, kv_heads, head_dim] :
         {std::tuple<int64_t, int64_t, int64_t>{8, 2, 128}, {12, 4, 64}, {16, 1, 16}, {4, 4, 256}, {32, 2, 48}}) {
      INFO(kv_type_name(type) << " heads " << heads << " kv_heads " << kv_heads << " head_dim " << head_dim);
      // A 61-token sequence: a 20-token prefix already cached, then a chunk of 41 tokens (positions
      // 20..60: key blocks end mid-block, items of 8 tokens and one of 1).
      const Cache cache(type, kv_heads * head_dim, {61}, 100);
      std::vector<int64_t> positions;
      for (int64_t p = 20; p < 61; ++p) positions.push_back(p);
      const Batch chunk(cache, std::vector<int>(positions.size(), 0), positions, true);
      compare(threads, cache, chunk, heads, kv_heads, head_dim);
      // One token of it alone (decode), and a chunk of one token at position 0.
      const Batch last(cache, {0}, {60}, true), first(cache, {0}, {0}, true);
      compare(threads, cache, last, heads, kv_heads, head_dim);
      compare(threads, cache, first, heads, kv_heads, head_dim);
    }
  }
}

TEST_CASE("CPU flash attention equals the reference on a decode batch of separate sequences", "[fast_attention]") {
  ThreadPool threads(12);  // more threads than a decode step's items: its keys are split
  for (const KvType type : {KvType::f16, KvType::int4, KvType::int4_g64}) {
    INFO(kv_type_name(type));
    const int64_t heads = 16, kv_heads = 4, head_dim = 64;
    const Cache cache(type, kv_heads * head_dim, {5, 33, 16, 80}, 300);
    const Batch decode(cache, {0, 1, 2, 3, 1}, {4, 32, 15, 79, 17}, false);
    compare(threads, cache, decode, heads, kv_heads, head_dim);
    // Fewer items than threads: each item's keys split into ranges (16, 32 keys) and merged, including
    // ranges past a short sequence's end and ranges a row sees none of.
    for (const int64_t min_split : {16, 32}) {
      INFO("keys per split at least " << min_split);
      const Batch one(cache, {3}, {79}, false), two(cache, {3, 0}, {79, 4}, false);
      compare(threads, cache, one, heads, kv_heads, head_dim, min_split);
      compare(threads, cache, two, heads, kv_heads, head_dim, min_split);
      const Batch chunk(cache, {3, 3}, {70, 79}, true);  // a prompt chunk of two tokens, split too
      compare(threads, cache, chunk, heads, kv_heads, head_dim, min_split);
    }
  }
}

TEST_CASE("CPU flash attention equals the reference for MLA (latent keys, absorbed queries)", "[fast_attention]") {
  ThreadPool threads(3);
  for (const KvType type :
       {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8, KvType::int4, KvType::int4_g64}) {
    // Rows of 160, 80, 40 and 192 values (the cache quantises the whole row here): 192 has groups of 64.
    for (const auto& [heads, kv_lora, rope] :
         {std::tuple<int64_t, int64_t, int64_t>{16, 128, 32}, {5, 64, 16}, {128, 32, 8}, {8, 128, 64}}) {
      INFO(kv_type_name(type) << " heads " << heads << " kv_lora " << kv_lora << " rope " << rope);
      const Cache cache(type, kv_lora + rope, {50, 19}, 500, KvLayout::mla_latent);
      std::vector<int64_t> positions;
      for (int64_t p = 13; p < 50; ++p) positions.push_back(p);
      compare_mla(threads, cache, Batch(cache, std::vector<int>(positions.size(), 0), positions, true), heads, kv_lora,
                  rope);
      compare_mla(threads, cache, Batch(cache, {1, 0, 1}, {18, 49, 0}, false), heads, kv_lora, rope);
      // Decode with its keys split into ranges of 16 whose states are merged.
      compare_mla(threads, cache, Batch(cache, {0}, {49}, false), heads, kv_lora, rope, 16);
    }
  }
}

TEST_CASE("CPU flash attention leaves to the reference what it does not serve", "[fast_attention]") {
  AttentionBatch batch;
  CHECK(fast_gqa_attention_supports(batch, 8, 2, 64));
  CHECK_FALSE(fast_gqa_attention_supports(batch, 8, 2, 40));   // head width not a multiple of 16
  CHECK_FALSE(fast_gqa_attention_supports(batch, 8, 3, 64));   // heads not a multiple of KV heads
  CHECK_FALSE(fast_gqa_attention_supports(batch, 256, 1, 64));  // a query group wider than an item's rows
  CHECK(fast_mla_attention_supports(batch, 128, 512));
  CHECK_FALSE(fast_mla_attention_supports(batch, 128, 500));
  CHECK_FALSE(fast_mla_attention_supports(batch, 129, 512));
  float row[4] = {};
  float* rows[1] = {row};
  batch.attention_rows = rows;  // retention policies read the probabilities: reference only
  CHECK_FALSE(fast_gqa_attention_supports(batch, 8, 2, 64));
  CHECK_FALSE(fast_mla_attention_supports(batch, 16, 512));
}
