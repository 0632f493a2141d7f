// The Backend v2 calls of the CPU backend: buffers, copies and events, prepared vectors, and the
// glue ops the forward pass runs between kernels (kv_append, router_topk, add, gated_add,
// gather_rows), each against a straightforward loop.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/rope.hpp"
#include "tandem/backend/cpu/reference/router.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_pool.hpp"

using namespace tandem;

namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Host vector → a buffer of `b`, and back, through the backend's own copies.
template <typename T>
DeviceBuffer put(Backend& b, const std::vector<T>& v) {
  DeviceBuffer d = b.allocate(v.size() * sizeof(T));
  b.copy_to_device(d.data(), v.data(), v.size() * sizeof(T));
  return d;
}
template <typename T = float>
std::vector<T> get(Backend& b, const DeviceBuffer& d, size_t n) {
  std::vector<T> v(n);
  b.copy_to_host(v.data(), d.data(), n * sizeof(T));
  b.synchronize();
  return v;
}

}  // namespace

TEST_CASE("cpu backend: buffers, copies and events", "[backend][engine]") {
  auto b = make_cpu_backend(2);
  const auto values = random_values(1000, 1);
  DeviceBuffer d = put(*b, values);
  CHECK(d.bytes() == values.size() * sizeof(float));
  CHECK(d.device() == Device::cpu());
  CHECK_FALSE(d.pinned_host());
  DeviceBuffer e = b->allocate(d.bytes());
  b->copy(e.data(), d.data(), d.bytes());
  auto event = b->create_event();
  b->record(*event);
  b->wait(*event);
  event->synchronize();
  CHECK(get(*b, e, values.size()) == values);
  DeviceBuffer pinned = b->allocate_host(64);
  CHECK(pinned.pinned_host());
  DeviceBuffer moved = std::move(pinned);
  CHECK(pinned.empty());
  CHECK(moved.bytes() == 64);
  CHECK(b->allocate(0).data() != nullptr);  // at least one byte
}

TEST_CASE("cpu backend: prepared vectors are the dequantised view, converted once", "[backend][engine]") {
  auto b = make_cpu_backend(1);
  const auto values = random_values(48, 2);
  std::vector<uint16_t> bf16(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf16[i] = f32_to_bf16(values[i]);
  TensorView view;
  view.dtype = DType::bf16;
  view.shape = Shape{48};
  view.data = bf16.data();
  view.nbytes = bf16.size() * 2;
  const float* prepared = b->prepare_vector(view);
  REQUIRE(prepared != nullptr);
  for (size_t i = 0; i < values.size(); ++i) CHECK(prepared[i] == bf16_to_f32(bf16[i]));
  CHECK(b->prepare_vector(view) == prepared);  // cached
  CHECK(b->prepare_vector(TensorView{}) == nullptr);
}

TEST_CASE("cpu backend: add, gated_add and gather_rows against loops", "[backend][engine]") {
  auto b = make_cpu_backend(2);
  const int64_t rows = 5, width = 37;
  const auto x = random_values(static_cast<size_t>(rows * width), 3), y = random_values(x.size(), 4);
  const auto gate = random_values(static_cast<size_t>(rows), 5, 3.0f);

  DeviceBuffer dx = put(*b, x), dy = put(*b, y), dout = b->allocate(x.size() * sizeof(float));
  b->add(dx.as<float>(), dy.as<float>(), rows * width, dout.as<float>());
  const auto sum = get(*b, dout, x.size());
  for (size_t i = 0; i < x.size(); ++i) CHECK(sum[i] == x[i] + y[i]);

  for (bool gated : {false, true}) {
    DeviceBuffer acc = put(*b, x), dg = put(*b, gate);
    b->gated_add(acc.as<float>(), dy.as<float>(), gated ? dg.as<float>() : nullptr, rows, width);
    const auto got = get(*b, acc, x.size());
    for (int64_t r = 0; r < rows; ++r) {
      const float g = gated ? 1.0f / (1.0f + std::exp(-gate[static_cast<size_t>(r)])) : 1.0f;
      for (int64_t i = 0; i < width; ++i) {
        const auto k = static_cast<size_t>(r * width + i);
        CHECK(got[k] == x[k] + g * y[k]);
      }
    }
  }

  // Rows picked by index, and a strided column slice (MLA's rope part of each head).
  const std::vector<int32_t> pick = {4, 0, 2};
  DeviceBuffer dpick = put(*b, pick), gathered = b->allocate(pick.size() * width * sizeof(float));
  b->gather_rows(dx.as<float>(), width, dpick.as<int32_t>(), 3, width, gathered.as<float>(), width);
  const auto g = get(*b, gathered, pick.size() * static_cast<size_t>(width));
  for (size_t i = 0; i < pick.size(); ++i)
    for (int64_t j = 0; j < width; ++j)
      CHECK(g[i * static_cast<size_t>(width) + static_cast<size_t>(j)] == x[static_cast<size_t>(pick[i] * width + j)]);
  const int64_t offset = 30, slice = 7;
  DeviceBuffer cols = b->allocate(static_cast<size_t>(rows * slice) * sizeof(float));
  b->gather_rows(dx.as<float>() + offset, width, nullptr, rows, slice, cols.as<float>(), slice);
  const auto c = get(*b, cols, static_cast<size_t>(rows * slice));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < slice; ++j)
      CHECK(c[static_cast<size_t>(r * slice + j)] == x[static_cast<size_t>(r * width + offset + j)]);
}

TEST_CASE("cpu backend: router_topk is route_tokens_to_experts for every router kind", "[backend][engine]") {
  auto b = make_cpu_backend(1);
  const int64_t tokens = 6;
  for (RouterKind kind : {RouterKind::softmax_topk, RouterKind::softmax_group_topk, RouterKind::sigmoid_noaux_tc}) {
    RoutingParams p;
    p.kind = kind;
    p.experts = 16;
    p.top_k = 4;
    p.norm_topk_prob = kind != RouterKind::softmax_group_topk;
    p.routed_scaling_factor = kind == RouterKind::sigmoid_noaux_tc ? 2.5 : 1.0;
    p.n_group = kind == RouterKind::softmax_topk ? 1 : 4;
    p.topk_group = kind == RouterKind::softmax_topk ? 1 : 2;
    const auto logits = random_values(static_cast<size_t>(tokens * p.experts), 6 + static_cast<uint32_t>(kind));
    const auto bias = random_values(static_cast<size_t>(p.experts), 9, 0.1f);
    const bool with_bias = kind == RouterKind::sigmoid_noaux_tc;
    std::vector<int32_t> want_ids(static_cast<size_t>(tokens * p.top_k));
    std::vector<float> want_weights(want_ids.size());
    RouterScratch scratch;
    route_tokens_to_experts(p, logits.data(), tokens, with_bias ? bias.data() : nullptr, want_ids.data(),
                            want_weights.data(), scratch);
    DeviceBuffer dl = put(*b, logits), db = put(*b, bias), ids = b->allocate(want_ids.size() * 4),
                 weights = b->allocate(want_ids.size() * 4);
    b->router_topk(p, dl.as<float>(), tokens, with_bias ? db.as<float>() : nullptr, ids.as<int32_t>(),
                   weights.as<float>());
    CHECK(get<int32_t>(*b, ids, want_ids.size()) == want_ids);
    CHECK(get(*b, weights, want_ids.size()) == want_weights);
    // A plain check of the reference itself: distinct experts, the best softmax score first.
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<int32_t> row(want_ids.begin() + t * p.top_k, want_ids.begin() + (t + 1) * p.top_k);
      std::sort(row.begin(), row.end());
      CHECK(std::adjacent_find(row.begin(), row.end()) == row.end());
      if (kind == RouterKind::softmax_topk) {
        const float* l = logits.data() + t * p.experts;
        CHECK(want_ids[static_cast<size_t>(t * p.top_k)] == std::max_element(l, l + p.experts) - l);
        double total = 0;
        for (int64_t i = 0; i < p.top_k; ++i) total += want_weights[static_cast<size_t>(t * p.top_k + i)];
        CHECK(total == Approx(1.0).epsilon(1e-6));
      }
    }
  }
}

TEST_CASE("cpu backend: kv_append writes each token's row at its slot", "[backend][engine][kv]") {
  auto b = make_cpu_backend(1);
  for (KvType type : {KvType::f32, KvType::f16, KvType::int4}) {
    const int64_t width = 32;
    KvPool pool(KvPoolSpec{KvLayout::gqa, 2, 2 * width, 4, 8, Device::cpu(), type});
    BlockTable a, c;
    a.reserve(pool, 9);
    c.reserve(pool, 3);
    b->kv_attach(pool, 1);
    // Slots 0..8 of a (crossing blocks, so int4 keys get sealed) and 0..2 of c, in one batch.
    // The batch as plain data: each token's block ids (a row of 3) and open-rows slot.
    std::vector<int64_t> slots;
    std::vector<BlockTable*> tables;
    std::vector<int32_t> flat, open;
    for (int64_t s = 0; s < 9; ++s) slots.push_back(s), tables.push_back(&a);
    for (int64_t s = 0; s < 3; ++s) slots.push_back(s), tables.push_back(&c);
    for (const BlockTable* t : tables) {
      for (size_t i = 0; i < 3; ++i) flat.push_back(i < t->blocks().size() ? t->blocks()[i] : 0);
      open.push_back(t->open_rows());
    }
    CHECK((type == KvType::int4) == (a.open_rows() != KvPool::kNoOpenRows));
    const auto n = static_cast<int64_t>(slots.size());
    const auto rows = random_values(static_cast<size_t>(n * width), 12);
    AttentionBatch batch;
    batch.tokens = n;
    batch.positions = slots.data();
    batch.block_tables = flat.data();
    batch.table_stride = 3;
    batch.open_rows = open.data();
    for (int64_t plane : {0, 1}) b->kv_append(pool, 1, plane, batch, rows.data(), width);
    std::vector<float> got(static_cast<size_t>(width)), want(static_cast<size_t>(width));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t plane : {0, 1}) {
        tables[static_cast<size_t>(t)]->read_row(pool, 1, plane, slots[static_cast<size_t>(t)], got.data());
        // The same row written straight through the table of a fresh pool is the reference.
        KvPool ref_pool(pool.spec());
        BlockTable ref;
        ref.reserve(ref_pool, slots[static_cast<size_t>(t)] + 1);
        ref.write_row(ref_pool, 1, plane, slots[static_cast<size_t>(t)], rows.data() + t * width);
        ref.read_row(ref_pool, 1, plane, slots[static_cast<size_t>(t)], want.data());
        INFO(kv_type_name(type) << " token " << t << " plane " << plane);
        if (type == KvType::int4 && plane == 0) {
          // Keys quantised per channel over a block: compare within the block's step.
          for (int64_t i = 0; i < width; ++i) CHECK(got[static_cast<size_t>(i)] == Approx(rows[static_cast<size_t>(t * width + i)]).margin(0.8));
        } else {
          CHECK(got == want);
        }
      }
    a.release(pool);
    c.release(pool);
  }
}

TEST_CASE("kv pool: a block copy is told to its listeners while they live", "[backend][engine][kv]") {
  KvPool pool(KvPoolSpec{KvLayout::gqa, 1, 8, 4, 4, Device::cpu(), KvType::f32});
  std::vector<std::pair<int32_t, int32_t>> seen;
  auto listener = std::make_shared<KvPool::BlockCopyListener>([&](int32_t from, int32_t to) { seen.emplace_back(from, to); });
  pool.add_block_copy_listener(listener);
  const int32_t a = pool.allocate_block();
  const int32_t copy = pool.copy_block(a);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == std::pair{a, copy});
  listener.reset();
  const int32_t again = pool.copy_block(a);
  CHECK(seen.size() == 1);
  for (int32_t id : {a, copy, again}) pool.release_block(id);
  CHECK(pool.free_blocks() == 4);
}

TEST_CASE("cpu backend: rope from plain RopeParams equals RotaryEmbedding, per distinct params",
          "[backend][engine][rope]") {
  auto b = make_cpu_backend(2);
  const int64_t rows = 5, heads = 2, head_stride = 40, row_stride = heads * head_stride + 3;
  const std::vector<int64_t> positions = {0, 3, 64, 1000, 4095};
  const auto data = random_values(static_cast<size_t>(rows * row_stride), 17);
  std::vector<RopeParams> all;
  for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved})
    for (RopeScalingType scaling : {RopeScalingType::none, RopeScalingType::linear, RopeScalingType::yarn}) {
      ModelConfig c;
      c.rope_theta = 50000.0;
      c.rope_layout = layout;
      c.max_position_embeddings = 8192;
      c.rope_scaling.type = scaling;
      c.rope_scaling.factor = 4.0;
      c.rope_scaling.original_max_position_embeddings = 2048;
      all.push_back(RopeParams::from_config(c, 32));
    }
  // Twice round: the backend's tables for each value, built once, stay apart.
  for (int round = 0; round < 2; ++round)
    for (const RopeParams& p : all) {
      INFO("round " << round << " layout " << static_cast<int>(p.layout) << " scaling "
                    << static_cast<int>(p.scaling.type));
      DeviceBuffer d = put(*b, data), pos = put(*b, positions);
      b->rope(p, d.as<float>(), rows, row_stride, heads, head_stride, pos.as<int64_t>());
      std::vector<float> want = data;
      RotaryEmbedding(p).apply(want.data(), rows, row_stride, heads, head_stride, positions.data());
      CHECK(get(*b, d, data.size()) == want);
      CHECK(want != data);
    }
  CHECK(rope_tables(all[0]).inverse_frequencies != rope_tables(all[1]).inverse_frequencies);  // linear scales
  CHECK(rope_tables(all[2]).attention_factor != 1.0);                                         // YaRN's mscale
}
