// Quantised KV (fp8 E4M3, int8, int4 and int4:64 with per-channel keys): the E4M3 code table, round trips
// within each format's stated error, the per-channel open block (truncate, share, compact), and
// attention reading quantised rows equals attention over the dequantised rows in an f32 cache.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "tandem/backend/cpu/reference/attention.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/kv_quant.hpp"
#include "tandem/kv/kv_type.hpp"

using namespace tandem;

namespace {

const KvType kAllTypes[] = {KvType::f32,  KvType::f16,  KvType::bf16,    KvType::fp8,
                            KvType::int8, KvType::int4, KvType::int4_g64};

// Rows with a spread of magnitudes and a few outlier channels (as real keys have).
std::vector<float> random_rows(int64_t rows, int64_t width, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(rows * width));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c)
      v[static_cast<size_t>(r * width + c)] = normal(rng) * (c % 11 == 3 ? 12.0f : 1.0f) + (c % 7 == 1 ? 3.0f : 0.0f);
  return v;
}

KvPoolSpec spec_for(KvLayout layout, KvType type, int64_t width, int64_t blocks = 8) {
  KvPoolSpec s;
  s.layout = layout;
  s.layers = 2;
  s.values_per_token = layout == KvLayout::gqa ? 2 * width : width;
  s.block_tokens = 16;
  s.blocks = blocks;
  s.dtype = type;
  return s;
}

}  // namespace

TEST_CASE("E4M3: every code decodes and encodes back to itself; encoding rounds to nearest", "[kv][kvquant]") {
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_f32(static_cast<uint8_t>(c));
    if ((c & 0x7f) == 0x7f) {
      CHECK(std::isnan(v));
      continue;
    }
    INFO("code " << c << " value " << v);
    if (c == 0x80) {
      CHECK(v == 0.0f);
      continue;
    }
    CHECK(f32_to_e4m3(v) == c);
  }
  CHECK(e4m3_to_f32(0x7e) == 448.0f);
  CHECK(e4m3_to_f32(0x01) == 0x1p-9f);
  CHECK(e4m3_to_f32(0x08) == 0x1p-6f);
  CHECK(f32_to_e4m3(1000.0f) == 0x7e);   // saturates
  CHECK(f32_to_e4m3(-1000.0f) == 0xfe);
  CHECK(f32_to_e4m3(1.0625f) == f32_to_e4m3(1.0f));  // tie between 1 and 1.125 goes to even
  CHECK(f32_to_e4m3(1.1875f) == f32_to_e4m3(1.25f));
  // Nearest of all codes, by brute force.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-460.0f, 460.0f);
  for (int i = 0; i < 2000; ++i) {
    const float x = u(rng) * (i % 3 == 0 ? 1e-3f : 1.0f);
    const float got = e4m3_to_f32(f32_to_e4m3(x));
    float best = 1e30f;
    for (int c = 0; c < 255; ++c)
      if ((c & 0x7f) != 0x7f) best = std::min(best, std::fabs(e4m3_to_f32(static_cast<uint8_t>(c)) - std::clamp(x, -448.0f, 448.0f)));
    CHECK(std::fabs(got - std::clamp(x, -448.0f, 448.0f)) == best);
  }
}

TEST_CASE("Quantised KV rows round-trip within each format's stated error", "[kv][kvquant]") {
  for (const int64_t width : {int64_t{64}, int64_t{96}, int64_t{40}, int64_t{128}}) {
    const std::vector<float> rows = random_rows(24, width, 11);
    for (const KvType type : {KvType::fp8, KvType::int8, KvType::int4, KvType::int4_g64}) {
      INFO(kv_type_name(type) << " width " << width);
      // int4:64: groups of 64 where 64 divides the row, else int4's groups.
      const int64_t g = type == KvType::int4_g64 && width % 64 == 0 ? 64 : kv_group_values(width);
      CHECK(width % g == 0);
      const size_t bytes = kv_row_bytes(type, width);
      const auto groups = static_cast<size_t>(width / g);
      CHECK(bytes == (kv_type_is_int4(type) ? static_cast<size_t>(width / 2) + 4 * groups
                                            : static_cast<size_t>(width) + 2 * groups));
      std::vector<uint8_t> stored(bytes);
      std::vector<float> back(static_cast<size_t>(width)), slice(5);
      for (int64_t r = 0; r < 24; ++r) {
        const float* x = rows.data() + r * width;
        kv_encode_row(type, x, stored.data(), width);
        kv_decode_row(type, stored.data(), back.data(), width);
        for (int64_t k = 0; k < width / g; ++k) {
          float lo = x[k * g], hi = x[k * g], absmax = 0;
          for (int64_t i = k * g; i < (k + 1) * g; ++i) {
            lo = std::min(lo, x[i]);
            hi = std::max(hi, x[i]);
            absmax = std::max(absmax, std::fabs(x[i]));
          }
          for (int64_t i = k * g; i < (k + 1) * g; ++i) {
            const float err = std::fabs(back[static_cast<size_t>(i)] - x[i]);
            // The stored scale is at most 2^-10 above the exact one (rounded up to f16).
            if (type == KvType::fp8) {
              const float scale = absmax / 448.0f * (1 + 0x1p-10f);
              CHECK(err <= std::fabs(x[i]) / 16 + scale / 1024 + 1e-6f);
            } else if (type == KvType::int8) {
              CHECK(err <= absmax / 127.0f * (1 + 0x1p-10f) / 2 + 1e-6f);
            } else {
              CHECK(err <= (hi - lo) / 15.0f * (1 + 0x1p-9f) / 2 + std::fabs(lo) / 2048 + 1e-6f);
            }
          }
        }
        // A slice decodes to the same values as the whole row.
        kv_decode_values(type, stored.data(), width, 29, 5, slice.data());
        for (int64_t i = 0; i < 5; ++i) CHECK(slice[static_cast<size_t>(i)] == back[static_cast<size_t>(29 + i)]);
      }
    }
  }
}

TEST_CASE("int4 per-channel key blocks: error per channel, open block, truncate, share, compact", "[kv][kvquant]") {
  const int64_t width = 32, bt = 16;
  KvPool pool(spec_for(KvLayout::gqa, KvType::int4, width));
  CHECK(pool.per_channel_plane(0));
  CHECK_FALSE(pool.per_channel_plane(1));
  // Keys: bt·width/2 code bytes + a (scale, min) f16 pair per channel; values: per-token rows.
  CHECK(pool.bytes_per_token() ==
        Approx(2.0 * ((bt * width / 2 + 4 * width) + bt * (width / 2 + 4.0)) / static_cast<double>(bt)));
  const int64_t n = 37;  // two sealed blocks and an open one of 5 rows
  const std::vector<float> keys = random_rows(n, width, 3), vals = random_rows(n, width, 4);
  BlockTable t;
  t.reserve(pool, n);
  for (int64_t p = 0; p < n; ++p)
    for (int64_t layer = 0; layer < 2; ++layer) {
      t.write_row(pool, layer, 0, p, keys.data() + p * width);
      t.write_row(pool, layer, 1, p, vals.data() + p * width);
    }
  std::vector<float> row(static_cast<size_t>(width));
  std::vector<std::vector<float>> before;
  for (int64_t p = 0; p < n; ++p) {
    t.read_row(pool, 1, 0, p, row.data());
    before.push_back(row);
    for (int64_t c = 0; c < width; ++c) {
      // Error bound per channel over the rows of p's block (the open block is exact).
      const int64_t b0 = p / bt * bt;
      if (b0 + bt > n) {
        CHECK(row[static_cast<size_t>(c)] == keys[static_cast<size_t>(p * width + c)]);
        continue;
      }
      float lo = 1e30f, hi = -1e30f;
      for (int64_t s = b0; s < b0 + bt; ++s) {
        lo = std::min(lo, keys[static_cast<size_t>(s * width + c)]);
        hi = std::max(hi, keys[static_cast<size_t>(s * width + c)]);
      }
      CHECK(std::fabs(row[static_cast<size_t>(c)] - keys[static_cast<size_t>(p * width + c)]) <=
            (hi - lo) / 30 * (1 + 0x1p-9f) + std::fabs(lo) / 2048 + 1e-6f);
    }
  }
  // A table sharing 20 positions reopens block 1 from its dequantised rows: same values.
  BlockTable shared = t.share_prefix(pool, 20);
  for (int64_t p = 0; p < 20; ++p) {
    shared.read_row(pool, 1, 0, p, row.data());
    CHECK(row == before[static_cast<size_t>(p)]);
  }
  shared.release(pool);
  // Truncating mid-block reopens it the same way; rewriting the rest seals it again.
  t.truncate(pool, 20);
  for (int64_t p = 0; p < 20; ++p) {
    t.read_row(pool, 1, 0, p, row.data());
    CHECK(row == before[static_cast<size_t>(p)]);
  }
  t.reserve(pool, n);
  for (int64_t p = 20; p < n; ++p)
    for (int64_t layer = 0; layer < 2; ++layer) {
      t.write_row(pool, layer, 0, p, keys.data() + p * width);
      t.write_row(pool, layer, 1, p, vals.data() + p * width);
    }
  for (int64_t p = 0; p < 16; ++p) {  // block 0 untouched
    t.read_row(pool, 1, 0, p, row.data());
    CHECK(row == before[static_cast<size_t>(p)]);
  }
  // Compaction keeps slots 0..3 and 20..36: rows of block 0's kept slots are unchanged, the rest
  // equal the dequantised rows before, requantised once (within that block's bound).
  std::vector<int64_t> kept = {0, 1, 2, 3};
  for (int64_t p = 20; p < n; ++p) kept.push_back(p);
  std::vector<std::vector<float>> kept_keys, kept_vals;
  for (const int64_t p : kept) {
    t.read_row(pool, 0, 0, p, row.data());
    kept_keys.push_back(row);
    t.read_row(pool, 0, 1, p, row.data());
    kept_vals.push_back(row);
  }
  t.compact(pool, kept);
  CHECK(t.capacity_tokens(pool) == 32);
  CHECK(pool.free_blocks() == 6);
  for (size_t i = 0; i < kept.size(); ++i) {
    t.read_row(pool, 0, 1, static_cast<int64_t>(i), row.data());
    CHECK(row == kept_vals[i]);  // per-token rows move as stored
    t.read_row(pool, 0, 0, static_cast<int64_t>(i), row.data());
    for (int64_t c = 0; c < width; ++c)
      CHECK(std::fabs(row[static_cast<size_t>(c)] - kept_keys[i][static_cast<size_t>(c)]) <= 3.0f);
    if (i < 4) CHECK(std::fabs(row[0] - kept_keys[i][0]) <= 0.5f);
  }
  t.release(pool);
  CHECK(pool.free_blocks() == 8);
}

// What the attention kernels read of `tokens` tokens of one sequence: its block ids (one row per
// token) and its open-rows slot, as the forward pass flattens them.
struct OneSequence {
  std::vector<int32_t> blocks, open;
  AttentionBatch batch;
  OneSequence(const BlockTable& t, const int64_t* positions, int64_t tokens, float* const* rows = nullptr) {
    for (int64_t k = 0; k < tokens; ++k) {
      blocks.insert(blocks.end(), t.blocks().begin(), t.blocks().end());
      open.push_back(t.open_rows());
    }
    batch.tokens = tokens;
    batch.positions = positions;
    batch.block_tables = blocks.data();
    batch.table_stride = static_cast<int64_t>(t.blocks().size());
    batch.open_rows = open.data();
    batch.attention_rows = rows;
  }
  OneSequence(const OneSequence&) = delete;
  OneSequence& operator=(const OneSequence&) = delete;
};

TEST_CASE("Attention over a quantised cache equals attention over its dequantised rows", "[kv][kvquant]") {
  ThreadPool threads(2);
  const int64_t heads = 4, kv_heads = 2, head_dim = 32, width = kv_heads * head_dim;
  const int64_t n = 45;  // positions 0..44: two sealed blocks, an open one
  const std::vector<float> keys = random_rows(n, width, 21), vals = random_rows(n, width, 22);
  const std::vector<float> q = random_rows(3, heads * head_dim, 23);
  const int64_t kv_lora = 64, rope = 32, mla_heads = 3;
  const std::vector<float> latent = random_rows(n, kv_lora + rope, 24);
  const std::vector<float> q_lat = random_rows(3, mla_heads * kv_lora, 25), q_rope = random_rows(3, mla_heads * rope, 26);
  for (const KvType type : kAllTypes) {
    INFO(kv_type_name(type));
    // The cache in `type`, and an f32 cache holding what the quantised one reads back.
    KvPool pool(spec_for(KvLayout::gqa, type, width)), exact(spec_for(KvLayout::gqa, KvType::f32, width));
    BlockTable t, e;
    t.reserve(pool, n);
    e.reserve(exact, n);
    std::vector<float> row(static_cast<size_t>(width));
    for (int64_t p = 0; p < n; ++p)
      for (int64_t plane = 0; plane < 2; ++plane)
        t.write_row(pool, 1, plane, p, (plane == 0 ? keys : vals).data() + p * width);
    for (int64_t p = 0; p < n; ++p)
      for (int64_t plane = 0; plane < 2; ++plane) {
        t.read_row(pool, 1, plane, p, row.data());
        e.write_row(exact, 1, plane, p, row.data());
      }
    const int64_t positions[3] = {44, 20, 3};
    std::vector<float> got(static_cast<size_t>(3 * heads * head_dim)), want(got.size()), again(got.size());
    gqa_attention(threads, pool, 1, OneSequence(t, positions, 3).batch, q.data(), heads, kv_heads, head_dim, 0.17f, got.data());
    gqa_attention(threads, exact, 1, OneSequence(e, positions, 3).batch, q.data(), heads, kv_heads, head_dim, 0.17f,
                  want.data());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-6).epsilon(1e-6));
    // The attention rows (for retention policies) do not change the output; they sum to heads.
    std::vector<float> sums(static_cast<size_t>(3 * n), 0.0f);
    float* rows[3] = {sums.data(), sums.data() + n, sums.data() + 2 * n};
    gqa_attention(threads, pool, 1, OneSequence(t, positions, 3, rows).batch, q.data(), heads, kv_heads, head_dim, 0.17f,
                  again.data());
    CHECK(again == got);
    for (int t3 = 0; t3 < 3; ++t3) {
      double total = 0;
      for (int64_t s = 0; s < n; ++s) total += sums[static_cast<size_t>(t3 * n + s)];
      CHECK(total == Approx(static_cast<double>(heads)).epsilon(1e-5));
      for (int64_t s = positions[t3] + 1; s < n; ++s) CHECK(sums[static_cast<size_t>(t3 * n + s)] == 0.0f);
    }

    // MLA: one latent plane, quantised per token.
    // The roped key (the last `rope` values) stays f16 in a quantised pool.
    KvPoolSpec mla_spec = spec_for(KvLayout::mla_latent, type, kv_lora + rope);
    mla_spec.rope_values = rope;
    KvPool mla(mla_spec), mla_exact(spec_for(KvLayout::mla_latent, KvType::f32, kv_lora + rope));
    CHECK_FALSE(mla.per_channel_plane(0));
    BlockTable m, me;
    m.reserve(mla, n);
    me.reserve(mla_exact, n);
    std::vector<float> lrow(static_cast<size_t>(kv_lora + rope));
    for (int64_t p = 0; p < n; ++p) {
      m.write_row(mla, 0, 0, p, latent.data() + p * (kv_lora + rope));
      m.read_row(mla, 0, 0, p, lrow.data());
      me.write_row(mla_exact, 0, 0, p, lrow.data());
      if (type != KvType::f32)
        for (int64_t i = kv_lora; i < kv_lora + rope; ++i) {
          const float x = latent[static_cast<size_t>(p * (kv_lora + rope) + i)];
          CHECK(lrow[static_cast<size_t>(i)] == (type == KvType::bf16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x))));
        }
    }
    std::vector<float> mgot(static_cast<size_t>(3 * mla_heads * kv_lora)), mwant(mgot.size());
    mla_attention(threads, mla, 0, OneSequence(m, positions, 3).batch, q_lat.data(), q_rope.data(), mla_heads, kv_lora, rope, 0.1f,
                  mgot.data());
    mla_attention(threads, mla_exact, 0, OneSequence(me, positions, 3).batch, q_lat.data(), q_rope.data(), mla_heads, kv_lora, rope,
                  0.1f, mwant.data());
    for (size_t i = 0; i < mgot.size(); ++i) CHECK(mgot[i] == Approx(mwant[i]).margin(1e-6).epsilon(1e-6));
  }
}

TEST_CASE("KV pool bytes per token follow the format", "[kv][kvquant]") {
  // Qwen3-30B-A3B-like GQA row: 4 KV heads × 128 = 512 values per plane, 48 layers.
  const auto per_token = [](KvLayout layout, KvType type, int64_t width) {
    KvPoolSpec s = spec_for(layout, type, width, 1);
    s.layers = 1;
    return KvPool(s).bytes_per_token();
  };
  CHECK(per_token(KvLayout::gqa, KvType::f16, 512) == 2048.0);
  CHECK(per_token(KvLayout::gqa, KvType::int8, 512) == 2.0 * (512 + 2 * 16));
  CHECK(per_token(KvLayout::gqa, KvType::fp8, 512) == 2.0 * (512 + 2 * 16));
  CHECK(per_token(KvLayout::gqa, KvType::int4, 512) == (256 + 4.0 * 512 / 16) + (256 + 4 * 16));
  CHECK(per_token(KvLayout::mla_latent, KvType::int4, 576) == 288 + 4 * 18);
  // int4:64: the values' (scale, min) pairs per 64 values; the per-channel keys as int4's.
  CHECK(per_token(KvLayout::gqa, KvType::int4_g64, 512) == (256 + 4.0 * 512 / 16) + (256 + 4 * 8));
  CHECK(per_token(KvLayout::mla_latent, KvType::int4_g64, 576) == 288 + 4 * 9);
  CHECK(per_token(KvLayout::mla_latent, KvType::int4_g64, 96) == 48 + 4 * 3);  // 64 does not divide 96
  // DeepSeek-V3's row: a 512-value latent quantised, the 64-value roped key in f16.
  KvPoolSpec mla = spec_for(KvLayout::mla_latent, KvType::fp8, 576, 1);
  mla.layers = 1;
  mla.rope_values = 64;
  CHECK(KvPool(mla).bytes_per_token() == 512 + 2 * 16 + 2 * 64);
  mla.dtype = KvType::f16;
  CHECK(KvPool(mla).bytes_per_token() == 2 * 576);
  mla.rope_values = 576;
  CHECK_THROWS_AS(KvPool(mla), Error);
}
