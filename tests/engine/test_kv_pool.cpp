// KV pool v2: element types (conversion rounding, bytes), the plane layout, reference-counted
// blocks with copy-on-write, BlockTable truncation, Session::truncate and generate's reuse of the
// longest common prefix.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/kv_type.hpp"

using namespace tandem;

namespace {

KvPoolSpec small_spec(KvType type, int64_t blocks = 4) {
  KvPoolSpec spec;
  spec.layout = KvLayout::gqa;
  spec.layers = 2;
  spec.values_per_token = 2 * 12;  // K and V rows of 12
  spec.block_tokens = 4;
  spec.blocks = blocks;
  spec.dtype = type;
  return spec;
}

std::vector<float> row_values(float seed, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = seed + 0.1f * static_cast<float>(i) - 0.37f;
  return v;
}

std::vector<float> read(const KvPool& pool, const BlockTable& t, int64_t layer, int64_t plane, int64_t pos) {
  std::vector<float> out(static_cast<size_t>(pool.row_width()));
  pool.read_row(t.block_of(pool, pos), layer, plane, pos % pool.spec().block_tokens, out.data());
  return out;
}

}  // namespace

TEST_CASE("KV types: names, parsing, sizes", "[kv]") {
  CHECK(parse_kv_type("f16") == KvType::f16);
  CHECK(parse_kv_type("bf16") == KvType::bf16);
  CHECK(parse_kv_type("f32") == KvType::f32);
  CHECK(std::string(kv_type_name(KvType::bf16)) == "bf16");
  // int4 names its group size only when asked to: int4 = int4:32.
  CHECK(parse_kv_type("int4") == KvType::int4);
  CHECK(parse_kv_type("int4:32") == KvType::int4);
  CHECK(parse_kv_type("int4:64") == KvType::int4_g64);
  CHECK(std::string(kv_type_name(KvType::int4)) == "int4");
  CHECK(std::string(kv_type_name(KvType::int4_g64)) == "int4:64");
  CHECK(is_kv_type_name("int4:64"));
  CHECK(is_kv_type_name("int4:32"));
  for (const char* bad : {"int4:16", "int4:", "int4:064", "int4_g64", "INT4:64"}) {
    INFO(bad);
    CHECK_FALSE(is_kv_type_name(bad));
    CHECK_THROWS_AS(parse_kv_type(bad), Error);
  }
  CHECK(kv_type_bytes(KvType::f32) == 4);
  CHECK(kv_type_bytes(KvType::f16) == 2);
  try {
    (void)parse_kv_type("q8_0");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::invalid_argument);
    CHECK(std::string(e.what()).find("f32, f16, bf16, fp8, int8 or int4") != std::string::npos);
    CHECK(std::string(e.what()).find("int4:64") != std::string::npos);
  }
}

TEST_CASE("KV row conversion rounds to nearest even and widens exactly", "[kv]") {
  // Values covering normals, subnormal halves, ties, overflow to infinity, and lengths with and
  // without a vector tail; the scalar reference converters are the ground truth.
  std::vector<float> src = {0.0f,        -0.0f,   1.0f,      -2.5f,       65504.0f,
                            65520.0f,    1e-7f,   -3e-5f,    6.1e-5f,     1.0009765625f + 0.00048828125f,
                            3.14159265f, -1e30f,  0.333333f, 1.00390625f, 2.0f,
                            7.77e-3f,    123.456f};
  for (const KvType type : {KvType::f16, KvType::bf16, KvType::f32}) {
    std::vector<uint8_t> stored(src.size() * kv_type_bytes(type));
    kv_encode_row(type, src.data(), stored.data(), static_cast<int64_t>(src.size()));
    std::vector<float> back(src.size());
    kv_decode_row(type, stored.data(), back.data(), static_cast<int64_t>(src.size()));
    for (size_t i = 0; i < src.size(); ++i) {
      INFO(kv_type_name(type) << " value " << src[i]);
      float expected = src[i];
      if (type == KvType::f16) expected = f16_to_f32(f32_to_f16(src[i]));
      if (type == KvType::bf16) expected = bf16_to_f32(f32_to_bf16(src[i]));
      CHECK(std::memcmp(&back[i], &expected, 4) == 0);
    }
  }
  // Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 in f16.
  const float tie = 1.0f + 0x1p-11f;
  uint16_t h = 0;
  kv_encode_row(KvType::f16, &tie, &h, 1);
  CHECK(h == 0x3c00);
}

TEST_CASE("KV pool: bytes follow the type; planes are K then V rows", "[kv]") {
  for (const KvType type : {KvType::f32, KvType::f16, KvType::bf16}) {
    KvPool pool(small_spec(type));
    CHECK(pool.planes() == 2);
    CHECK(pool.row_width() == 12);
    CHECK(pool.bytes() == static_cast<uint64_t>(2 * 24 * 4 * 4) * kv_type_bytes(type));
    // Rows of one layer's plane in a block are contiguous, K plane before V plane.
    CHECK(pool.row(1, 1, 0, 1) - pool.row(1, 1, 0, 0) == static_cast<std::ptrdiff_t>(pool.row_bytes()));
    CHECK(pool.row(1, 1, 1, 0) - pool.row(1, 1, 0, 0) == static_cast<std::ptrdiff_t>(4 * pool.row_bytes()));
  }
  KvPoolSpec mla = small_spec(KvType::f16);
  mla.layout = KvLayout::mla_latent;
  mla.values_per_token = 40;
  KvPool latent(mla);
  CHECK(latent.planes() == 1);
  CHECK(latent.row_width() == 40);
  KvPoolSpec odd = small_spec(KvType::f16);
  odd.values_per_token = 7;
  CHECK_THROWS_AS(KvPool(odd), Error);
}

TEST_CASE("KV pool: reference counts, sharing, copy-on-write, release", "[kv]") {
  KvPool pool(small_spec(KvType::f16, 5));
  BlockTable a;
  a.reserve(pool, 10);  // 3 blocks
  REQUIRE(a.blocks().size() == 3);
  CHECK(pool.free_blocks() == 2);
  for (int64_t p = 0; p < 10; ++p)
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t plane = 0; plane < 2; ++plane)
        a.write_row(pool, layer, plane, p,
                    row_values(static_cast<float>(p * 4 + layer * 2 + plane), 12).data());

  // b shares a's first 6 positions: two blocks, each now with two references.
  BlockTable b = a.share_prefix(pool, 6);
  REQUIRE(b.blocks().size() == 2);
  CHECK(b.blocks()[0] == a.blocks()[0]);
  CHECK(b.blocks()[1] == a.blocks()[1]);
  CHECK(pool.ref_count(a.blocks()[0]) == 2);
  CHECK(pool.ref_count(a.blocks()[1]) == 2);
  CHECK(pool.ref_count(a.blocks()[2]) == 1);
  CHECK(pool.free_blocks() == 2);
  CHECK_THROWS_AS(a.share_prefix(pool, 13), Error);

  // b writes position 5 (in the second, shared block): copy-on-write gives b its own block with the
  // shared rows copied, and a's rows stay as they were.
  const int32_t shared = b.blocks()[1];
  b.make_writable(pool, 5, 6);
  CHECK(b.blocks()[0] == a.blocks()[0]);  // not written: still shared
  CHECK(b.blocks()[1] != shared);
  CHECK(pool.ref_count(shared) == 1);
  CHECK(pool.ref_count(b.blocks()[1]) == 1);
  CHECK(pool.free_blocks() == 1);
  CHECK(read(pool, b, 1, 1, 4) == read(pool, a, 1, 1, 4));  // copied, every layer and plane
  CHECK(read(pool, b, 0, 0, 5) == read(pool, a, 0, 0, 5));
  b.write_row(pool, 0, 0, 5, row_values(100.0f, 12).data());
  CHECK(read(pool, b, 0, 0, 5) != read(pool, a, 0, 0, 5));
  CHECK(read(pool, a, 0, 0, 5)[0] == Approx(row_values(20.0f, 12)[0]).epsilon(1e-3));
  // A block this table holds alone is written in place.
  const int32_t own = b.blocks()[1];
  b.make_writable(pool, 4, 8);
  CHECK(b.blocks()[1] == own);

  // Exhaustion while copying: the error is out_of_memory and the table stays valid.
  BlockTable c = a.share_prefix(pool, 10);  // all three of a's blocks
  BlockTable filler;
  filler.reserve(pool, 4);  // the last free block
  CHECK(pool.free_blocks() == 0);
  try {
    c.make_writable(pool, 0, 10);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::out_of_memory);
  }
  CHECK(c.blocks() == a.blocks());
  CHECK(pool.ref_count(a.blocks()[0]) == 3);

  // Releasing drops references; a block is free only when its last holder lets go.
  filler.release(pool);
  c.release(pool);
  CHECK(pool.ref_count(a.blocks()[0]) == 2);
  CHECK(pool.free_blocks() == 1);
  a.release(pool);
  CHECK(pool.ref_count(b.blocks()[0]) == 1);
  CHECK(pool.free_blocks() == 3);
  b.release(pool);
  CHECK(pool.free_blocks() == 5);
  CHECK(pool.ref_count(0) == 0);
  CHECK_THROWS_AS(pool.release_block(0), Error);
  CHECK_THROWS_AS(pool.retain_block(0), Error);
  CHECK_THROWS_AS(pool.copy_block(0), Error);
}

TEST_CASE("KV pool: layers a device keeps have no host planes; the others work as before", "[kv]") {
  KvPoolSpec spec = small_spec(KvType::f16, 3);
  spec.layers = 3;
  const KvPool full(spec);
  spec.device_layers = {false, true, false};  // layer 1's attention runs on a GPU
  KvPool pool(spec);
  CHECK(pool.bytes() == full.bytes() / 3 * 2);
  CHECK(pool.on_host(0));
  CHECK_FALSE(pool.on_host(1));
  CHECK(pool.on_host(2));
  BlockTable t;
  t.reserve(pool, 6);
  for (int64_t p = 0; p < 6; ++p)
    for (int64_t layer : {0, 2})
      for (int64_t plane = 0; plane < 2; ++plane)
        t.write_row(pool, layer, plane, p,
                    row_values(static_cast<float>(p * 8 + layer * 2 + plane), 12).data());
  CHECK_THROWS_AS(t.write_row(pool, 1, 0, 0, row_values(1.0f, 12).data()), Error);
  CHECK_THROWS_AS(pool.plane_data(t.blocks()[0], 1, 0), Error);
  // Each host layer's rows are its own (the compact layout maps layer 2 next to layer 0).
  CHECK(read(pool, t, 2, 1, 5)[0] == Approx(row_values(5 * 8 + 4 + 1, 12)[0]).epsilon(1e-3));
  CHECK(read(pool, t, 0, 0, 3)[0] == Approx(row_values(3 * 8, 12)[0]).epsilon(1e-3));
  // Copy-on-write copies the host layers and tells the listeners (a GPU copies its own layer).
  int copies = 0;
  auto listener = std::make_shared<KvPool::BlockCopyListener>([&](int32_t, int32_t) { ++copies; });
  pool.add_block_copy_listener(listener);
  BlockTable shared = t.share_prefix(pool, 4);
  shared.make_writable(pool, 0, 4);
  CHECK(copies == 1);
  CHECK(read(pool, shared, 2, 0, 2) == read(pool, t, 2, 0, 2));
  shared.release(pool);
  t.release(pool);
  // All layers on a device: nothing on the host; a wrong-sized list is refused.
  spec.device_layers = {true, true, true};
  CHECK(KvPool(spec).bytes() == 0);
  spec.device_layers = {true};
  CHECK_THROWS_AS(KvPool(spec), Error);
}

TEST_CASE("KV pool: an int4 sequence's open key rows are a pool slot its table holds, read by plain data",
          "[kv]") {
  // f16 has no per-channel plane: no slot, and asking for one is an internal error.
  KvPool plain(small_spec(KvType::f16));
  BlockTable f;
  f.reserve(plain, 5);
  CHECK(f.open_rows() == KvPool::kNoOpenRows);
  CHECK_THROWS_AS(plain.acquire_open_rows(), Error);
  f.release(plain);

  KvPool pool(small_spec(KvType::int4, 8));
  BlockTable a;
  a.reserve(pool, 6);  // block 0 sealed once slot 3 is written, block 1 open
  REQUIRE(a.open_rows() != KvPool::kNoOpenRows);
  for (int64_t p = 0; p < 6; ++p) a.write_row(pool, 1, 0, p, row_values(static_cast<float>(p), 12).data());
  CHECK(pool.open_block(a.open_rows(), 1) == 1);
  // The open block's keys read back exactly, through the table and through its plain data.
  std::vector<float> scratch(12);
  for (int64_t p = 4; p < 6; ++p) {
    const float* v = pool.values_at(a.blocks().data(), a.open_rows(), 1, 0, p, 0, 12, scratch.data());
    CHECK(std::vector<float>(v, v + 12) == row_values(static_cast<float>(p), 12));
    CHECK(a.values(pool, 1, 0, p, 0, 12, scratch.data()) == v);
  }
  // A shared prefix gets a slot of its own holding the same rows; writing one leaves the other.
  BlockTable b = a.share_prefix(pool, 6);
  REQUIRE(b.open_rows() != a.open_rows());
  b.make_writable(pool, 5, 6);
  b.write_row(pool, 1, 0, 5, row_values(40.0f, 12).data());
  const float* in_a = pool.values_at(a.blocks().data(), a.open_rows(), 1, 0, 5, 0, 12, scratch.data());
  CHECK(std::vector<float>(in_a, in_a + 12) == row_values(5.0f, 12));
  // A moved table takes its slot along; an unknown slot is an internal error, not a wild read.
  BlockTable moved = std::move(b);
  CHECK(b.open_rows() == KvPool::kNoOpenRows);
  CHECK_THROWS_AS(pool.values_at(moved.blocks().data(), 9999, 1, 0, 5, 0, 12, scratch.data()), Error);
  // Released tables give their slots back: many sequences one after another never run out.
  moved.release(pool);
  a.release(pool);
  for (int i = 0; i < 1000; ++i) {
    BlockTable t;
    t.reserve(pool, 1);
    t.release(pool);
  }
  CHECK(pool.free_blocks() == 8);
}

TEST_CASE("BlockTable::truncate releases whole blocks past the kept positions", "[kv]") {
  KvPool pool(small_spec(KvType::f32, 4));
  BlockTable t;
  t.reserve(pool, 16);
  CHECK(pool.free_blocks() == 0);
  t.truncate(pool, 9);  // positions 0..8: three blocks
  CHECK(t.blocks().size() == 3);
  CHECK(pool.free_blocks() == 1);
  t.truncate(pool, 8);
  CHECK(t.blocks().size() == 2);
  t.truncate(pool, 12);  // never grows
  CHECK(t.blocks().size() == 2);
  t.truncate(pool, 0);
  CHECK(t.blocks().empty());
  CHECK(pool.free_blocks() == 4);
}

TEST_CASE("Session::truncate keeps a prefix; continuing equals a fresh session", "[engine][kv]") {
  const std::vector<int32_t> prompt = {51, 261, 220, 80, 84, 72,  481, 263, 304,
                                       86, 77,  280, 78, 87, 220, 73,  287};
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    INFO(name);
    for (const KvType type : {KvType::f32, KvType::f16}) {
      auto engine = test::load_for_test(test::data_dir() + "/" + name, 4, 512, type);
      auto s = engine->new_session();
      s->prefill(prompt);
      CHECK_THROWS_AS(s->truncate(18), Error);
      CHECK_THROWS_AS(s->truncate(-1), Error);
      try {
        s->truncate(100);
      } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::out_of_range);
      }
      s->truncate(17);
      CHECK(s->position() == 17);
      s->truncate(6);  // mid-block: positions 0..5 stay
      CHECK(s->position() == 6);
      CHECK(s->tokens() == std::vector<int32_t>(prompt.begin(), prompt.begin() + 6));
      const std::vector<int32_t> tail = {9, 9, 400, 7, 13};
      s->prefill(tail, true);
      auto fresh = engine->new_session();
      std::vector<int32_t> whole(prompt.begin(), prompt.begin() + 6);
      whole.insert(whole.end(), tail.begin(), tail.end());
      fresh->prefill(whole, true);
      const auto f = fresh->all_logits();
      const auto got = s->all_logits();
      CHECK(test::relative_max_error(got, f.subspan(6 * static_cast<size_t>(engine->config().vocab_size))) <=
            1e-6);
      s->truncate(0);
      CHECK(s->position() == 0);
    }
  }
  // Blocks past the kept prefix go back to the pool: a second session can use them.
  LoadOptions o;
  o.max_context_tokens = 16;
  o.max_sessions = 2;
  o.kv_block_tokens = 4;
  o.load_tokenizer = false;
  auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe", o);
  auto a = engine->new_session();
  a->prefill(std::span<const int32_t>(prompt).first(16));
  auto b = engine->new_session();
  b->prefill(std::span<const int32_t>(prompt).first(16));  // the pool holds exactly two contexts
  a->truncate(0);
  b->truncate(3);
  a->prefill(std::span<const int32_t>(prompt).first(16));
  CHECK(a->position() == 16);
}

TEST_CASE("generate reuses the longest common prefix and equals a fresh session", "[engine][generate][kv]") {
  const std::vector<int32_t> first = {51, 261, 220, 80, 84, 72,  481, 263, 304,
                                      86, 77,  280, 78, 87, 220, 73,  287};
  std::vector<int32_t> diverging(first.begin(), first.begin() + 9);  // same 9 tokens, then others
  diverging.insert(diverging.end(), {400, 17, 5, 311, 90});
  GenerateOptions options;
  options.sampling.temperature = 0;
  options.max_new_tokens = 8;
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    INFO(name);
    auto engine = test::load_for_test(test::data_dir() + "/" + name, 4, 512, KvType::f32);
    auto session = engine->new_session();
    (void)generate(*session, nullptr, first, options);
    const auto reused = generate(*session, nullptr, diverging, options);
    CHECK(reused.stats.prompt_tokens == static_cast<int64_t>(diverging.size()));
    CHECK(reused.stats.prefilled_tokens == static_cast<int64_t>(diverging.size()) - 9);
    const std::vector<float> reused_logits(session->logits().begin(), session->logits().end());

    auto fresh_session = engine->new_session();
    const auto fresh = generate(*fresh_session, nullptr, diverging, options);
    CHECK(fresh.stats.prefilled_tokens == static_cast<int64_t>(diverging.size()));
    CHECK(reused.ids == fresh.ids);
    CHECK(session->tokens() == fresh_session->tokens());
    CHECK(test::relative_max_error(reused_logits, fresh_session->logits()) <= 1e-6);
    session.reset();
    fresh_session.reset();

    // The same prompt again: all of it is held, one token is prefilled for its logits.
    auto again_session = engine->new_session();
    (void)generate(*again_session, nullptr, diverging, options);
    const auto again = generate(*again_session, nullptr, diverging, options);
    CHECK(again.stats.prefilled_tokens == 1);
    CHECK(again.ids == fresh.ids);
    // A prompt that is a prefix of what is held: truncated, last token prefilled.
    const std::vector<int32_t> shorter(diverging.begin(), diverging.begin() + 5);
    const auto short_run = generate(*again_session, nullptr, shorter, options);
    CHECK(short_run.stats.prefilled_tokens == 1);
    auto short_fresh = engine->new_session();
    CHECK(generate(*short_fresh, nullptr, shorter, options).ids == short_run.ids);
  }
}
