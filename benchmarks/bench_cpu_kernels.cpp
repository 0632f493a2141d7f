// The fast CPU dot-product kernels alone, per weight type, ISA level and tokens per call: one
// 2048-wide weight row block after another (256 rows, L2-resident, or 32768 rows, DRAM), reported
// as weight bytes per CPU second (Google Benchmark's CPU time, so a loaded machine still gives a
// per-core figure). Random weights and activations; the values do not change the timing.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iterator>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/attention_block.hpp"
#include "backend/cpu/kernels/int8_strips.hpp"
#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/kernels/matmul_tile.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "backend/cpu/fast_ops.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/formats/dequantize.hpp"

using namespace tandem;
using namespace tandem::kernels;

namespace {

constexpr int64_t kIn = 2048;

void bench_dot(benchmark::State& state, DType type, IsaLevel level) {
  if (!isa_level_supported(level)) {
    state.SkipWithError("this CPU lacks the ISA level");
    return;
  }
  const int64_t rows = state.range(0);
  const int tokens = static_cast<int>(state.range(1));
  const auto& tr = dtype_traits(type);
  const int64_t row_bytes = kIn / tr.block_elems * tr.block_bytes;
  std::vector<uint8_t> w(static_cast<size_t>(rows * row_bytes));
  std::mt19937 rng(1);
  for (auto& b : w) b = static_cast<uint8_t>(rng() & 0x3f);  // small values: no NaN/Inf in any type
  std::vector<float> x(static_cast<size_t>(kIn * tokens));
  for (auto& v : x) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
  const WeightKind kind = *weight_kind_for(type);
  const ActFormat format = act_format(kind);
  const int64_t stride = format == ActFormat::f32 ? kIn * 4 : act_row_bytes(format, kIn);
  std::vector<uint8_t> q(static_cast<size_t>(stride * tokens));
  if (format == ActFormat::f32)
    std::memcpy(q.data(), x.data(), q.size());
  else
    quantize_rows(make_kernel_table(IsaLevel::scalar), format, x.data(), kIn, kIn, 0, tokens, q.data());
  std::vector<float> scales(16 * 16, 1.0f);
  const KernelTable table = make_kernel_table(level);
  const DotFn dot = table.dot[static_cast<int>(kind)];
  std::vector<float> y(static_cast<size_t>(rows * tokens));
  for (auto _ : state) {
    for (int64_t r = 0; r < rows; ++r)
      dot(w.data() + r * row_bytes, q.data(), stride, tokens, kIn, scales.data(), y.data() + r, rows);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * rows * row_bytes);
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows * kIn * tokens),
                                               benchmark::Counter::kIsRate);
}

// Prefill tiles: matmul_tile over `rows` × 2048 weights and `tokens` tokens, as FastCpuOps calls it
// (16-row strips; at >= kTileMinTokens tokens the tile kernels of the level: "avx512" vpdpbusd on
// packed strips, "amx" TDPBSUD; "avx512_dot" the 4-token dot kernels alone). "emulated_amx" is the AMX tile code with the tile instructions in plain C++
// (correctness only: slow by design); "avx512_repacked" the strips repacked at preparation
// (strip_repack.hpp), every token count; "amx_repacked" AMX on them from kTileMinTokens tokens.
// Reported as multiply-adds per CPU second.
enum Variant { avx512_dot, avx512_tile, amx_tile, emulated_amx_tile, avx512_repacked, amx_repacked };

// `rows` × 2048 random weights of `type` and `tokens` activation rows quantised for its kernels.
struct MatmulCase {
  std::vector<uint8_t> w;
  LinearWeight weight;
  WeightKind kind;
  int64_t stride;
  std::vector<uint8_t> q;
  MatmulCase(DType type, int64_t rows, int64_t tokens, int64_t in = kIn) : kind(*weight_kind_for(type)) {
    const auto& tr = dtype_traits(type);
    w.resize(static_cast<size_t>(rows * (in / tr.block_elems * tr.block_bytes)));
    std::mt19937 rng(1);
    for (auto& b : w) b = static_cast<uint8_t>(rng() & 0x3f);
    weight.weight.dtype = type;
    weight.weight.shape = Shape{rows, in};
    weight.weight.data = w.data();
    weight.weight.nbytes = w.size();
    std::vector<float> x(static_cast<size_t>(in * tokens));
    for (auto& v : x) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
    const ActFormat format = act_format(kind);
    stride = act_row_bytes(format, in);
    q.resize(static_cast<size_t>(stride * tokens));
    quantize_rows(make_kernel_table(IsaLevel::scalar), format, x.data(), in, in, 0, tokens, q.data());
  }
  // The weights repacked into strips (64-byte aligned), made on first use.
  const uint8_t* repacked() {
    if (repacked_storage.empty()) {
      const int64_t rows = weight.out_features(), in = weight.in_features();
      repacked_storage.resize(static_cast<size_t>(repacked_bytes(kind, rows, in) + kRepackedAlign));
      uint8_t* at = aligned_repacked();
      repack_strips(kind, w.data(), weight.weight.row_stride_bytes(), rows, in, 0, (rows + kTileRows - 1) / kTileRows,
                    at);
    }
    return aligned_repacked();
  }

 private:
  std::vector<uint8_t> repacked_storage;
  uint8_t* aligned_repacked() {
    return repacked_storage.data() +
           (kRepackedAlign - reinterpret_cast<uintptr_t>(repacked_storage.data()) % kRepackedAlign) % kRepackedAlign;
  }
};

void bench_tile(benchmark::State& state, DType type, Variant variant) {
  const IsaLevel level = variant == amx_tile || variant == amx_repacked ? IsaLevel::amx : IsaLevel::avx512;
  if (!isa_level_supported(level)) {
    state.SkipWithError("this CPU lacks the ISA level");
    return;
  }
  KernelTable table = variant == emulated_amx_tile ? make_emulated_amx_table() : make_kernel_table(level);
  if (variant == avx512_dot) std::fill(std::begin(table.tile), std::end(table.tile), nullptr);
  const int64_t rows = state.range(0), tokens = state.range(1);
  MatmulCase c(type, rows, tokens);
  const uint8_t* repacked = variant == avx512_repacked || variant == amx_repacked ? c.repacked() : nullptr;
  std::vector<uint8_t> workspace(static_cast<size_t>(matmul_tile_workspace_bytes(table, c.kind, kIn)) + 1);
  std::vector<float> y(static_cast<size_t>(rows * tokens));
  for (auto _ : state) {
    for (int64_t o = 0; o < rows; o += 16)
      matmul_tile(table, c.weight, c.kind, {c.q.data(), c.stride}, tokens, o, std::min<int64_t>(rows, o + 16), nullptr,
                  y.data() + o, rows, workspace.data(), repacked);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows * kIn * tokens),
                                               benchmark::Counter::kIsRate);
}

// The int8 strips (int8_strips.hpp) on AMX: `rows` × 2048 of `type` requantised once, then the
// int8 kernel strip by strip over `tokens` (a multiple of 16) activation rows.
void bench_int8(benchmark::State& state, DType type) {
  if (!isa_level_supported(IsaLevel::amx)) {
    state.SkipWithError("this CPU lacks the ISA level");
    return;
  }
  const KernelTable table = make_kernel_table(IsaLevel::amx);
  const int64_t rows = state.range(0), tokens = state.range(1);
  MatmulCase c(type, rows, tokens);
  const int64_t strips = (rows + kTileRows - 1) / kTileRows, strip_bytes = int8_strip_bytes(kIn);
  std::vector<uint8_t> storage(static_cast<size_t>(int8_strips_bytes(type, rows, kIn) + 64));
  uint8_t* copy = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  requantise_int8_strips(type, c.w.data(), static_cast<int64_t>(c.weight.weight.row_stride_bytes()), rows, kIn, 0,
                         strips, copy);
  std::vector<float> y(static_cast<size_t>(rows * tokens));
  for (auto _ : state) {
    for (int64_t st = 0; st < strips; ++st)
      table.int8_wide(copy + st * strip_bytes, static_cast<int>(std::min<int64_t>(kTileRows, rows - st * kTileRows)),
                      c.q.data(), c.stride, tokens, kIn, y.data() + st * kTileRows, rows, table.prefetch_bytes);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows * kIn * tokens),
                                               benchmark::Counter::kIsRate);
}

// Decode's matrix-vector product: matmul_tile at one token over `rows` × range(1) (2048, or 768 as
// Qwen3-30B-A3B's expert down projections) of the AVX-512 kernels, in runs of range(2) rows (64 as
// one pool worker takes its share of a layer, 16 as a MoE gate/up item), with the weight prefetch:
// 256 rows stay in L2, 131,072 (57-216 MB) come from DRAM (32,768 rows, 37-54 MB at 2048, partly
// from a large L3). Weight bytes per CPU second.
void bench_gemv(benchmark::State& state, DType type, bool repack) {
  if (!isa_level_supported(IsaLevel::avx512)) {
    state.SkipWithError("this CPU lacks the ISA level");
    return;
  }
  const KernelTable table = make_kernel_table(IsaLevel::avx512);
  const int64_t rows = state.range(0), in = state.range(1), run = state.range(2);
  MatmulCase c(type, rows, 1, in);
  const uint8_t* repacked = repack ? c.repacked() : nullptr;
  std::vector<float> y(static_cast<size_t>(rows));
  for (auto _ : state) {
    for (int64_t o = 0; o < rows; o += run)
      matmul_tile(table, c.weight, c.kind, {c.q.data(), c.stride}, 1, o, std::min<int64_t>(rows, o + run), nullptr,
                  y.data() + o, rows, nullptr, repacked);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(c.w.size()));
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows * in),
                                               benchmark::Counter::kIsRate);
}

// ThreadPool dispatch: one empty loop over every thread (the shape of the fused MoE's one dispatch
// per layer), real time per call. gap_us: the caller busy-waits this long between calls, as it
// would while a GPU runs a layer's attention; beyond ThreadPool::kDefaultSpinMicroseconds the workers
// have gone to sleep and the call pays their wake-up.
void bench_dispatch(benchmark::State& state) {
  ThreadPool pool(static_cast<int>(state.range(0)));
  const auto gap = std::chrono::microseconds(state.range(1));
  std::atomic<int64_t> calls{0};
  for (auto _ : state) {
    const auto idle_until = std::chrono::steady_clock::now() + gap;
    while (std::chrono::steady_clock::now() < idle_until) {
    }
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(pool.size(), [&](int64_t, int64_t, int) { calls.fetch_add(1, std::memory_order_relaxed); });
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  benchmark::DoNotOptimize(calls.load());
}

// One Qwen3-30B-A3B MoE layer (128 experts of 2048 -> 768 -> 2048, Q4_K, top 8) through FastCpuOps,
// as `tandem bench experts` runs it, with the operator's one dispatch (dispatches:1) or the two of
// larger batches (dispatches:2), so both schedules can be compared at any thread count on one
// machine. Fresh random routing every step (so the experts come from DRAM, not a cache); real
// time of the operator only; bytes/s = expert bytes read.
void bench_moe(benchmark::State& state) {
  constexpr int64_t kExperts = 128, kHidden = 2048, kInter = 768, kTopK = 8;
  const int64_t gate_bytes = kInter * (kHidden / 256) * 144, down_bytes = kHidden * (kInter / 256) * 144;
  const int64_t expert_bytes = 2 * gate_bytes + down_bytes;
  static const std::vector<uint8_t> weights = [&] {
    std::vector<uint8_t> w(static_cast<size_t>(kExperts * expert_bytes));
    uint32_t v = 1;
    for (auto& b : w) b = static_cast<uint8_t>(((v = v * 1664525u + 1013904223u) >> 24) & 0x3f);  // no NaN scales
    return w;
  }();
  auto view = [&](int64_t offset, int64_t rows, int64_t in) {
    LinearWeight l;
    l.weight.dtype = DType::q4_k;
    l.weight.shape = Shape{rows, in};
    l.weight.data = weights.data() + offset;
    l.weight.nbytes = static_cast<size_t>(rows * (in / 256) * 144);
    return l;
  };
  ExpertWeights experts;
  for (int64_t e = 0; e < kExperts; ++e) {
    const int64_t base = e * expert_bytes;
    experts.gate.push_back(view(base, kInter, kHidden));
    experts.up.push_back(view(base + gate_bytes, kInter, kHidden));
    experts.down.push_back(view(base + 2 * gate_bytes, kHidden, kInter));
  }
  ThreadPool pool(static_cast<int>(state.range(0)));
  FastCpuOps ops(pool, best_isa_level());
  const int64_t tokens = state.range(1);
  if (state.range(2) == 2) ops.set_single_dispatch_rows(0);
  std::mt19937 rng(3);
  std::vector<float> x(static_cast<size_t>(tokens * kHidden)), out(x.size());
  for (auto& v : x) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
  std::vector<int32_t> ids(static_cast<size_t>(tokens * kTopK)), all(kExperts);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<float> route(ids.size(), 1.0f / kTopK);
  int64_t bytes = 0;
  for (auto _ : state) {
    std::vector<bool> hit(kExperts);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t k = 0; k < kTopK; ++k) {
        std::swap(all[static_cast<size_t>(k)], all[static_cast<size_t>(k + static_cast<int64_t>(rng() % (kExperts - k)))]);
        ids[static_cast<size_t>(t * kTopK + k)] = all[static_cast<size_t>(k)];
        hit[static_cast<size_t>(all[static_cast<size_t>(k)])] = true;
      }
    bytes += std::count(hit.begin(), hit.end(), true) * expert_bytes;
    const auto start = std::chrono::steady_clock::now();
    ops.moe_routed_experts(experts, x.data(), tokens, kHidden, ids.data(), route.data(), kTopK, out.data());
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  state.SetBytesProcessed(bytes);
}

// One key block of CPU flash attention (attend_keys): `rows` query rows (a prompt chunk's tokens ×
// a head's query group) against 16 keys of width 128, reported as multiply-adds (scores and
// values) per CPU second.
void bench_attend(benchmark::State& state, IsaLevel level) {
  if (!isa_level_supported(level)) {
    state.SkipWithError("this CPU lacks the ISA level");
    return;
  }
  const int64_t rows = state.range(0), dim = 128;
  std::mt19937 rng(3);
  const auto values = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
    return v;
  };
  const std::vector<float> q = values(rows * dim), keys_t = values(kAttendKeys * dim), vals = values(kAttendKeys * dim);
  std::vector<const float*> q_rows(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) q_rows[static_cast<size_t>(r)] = q.data() + r * dim;
  std::vector<int64_t> visible(static_cast<size_t>(rows), kAttendKeys);
  std::vector<float> max(static_cast<size_t>(rows), -1e30f), sum(static_cast<size_t>(rows)),
      acc(static_cast<size_t>(rows * dim)), scores(static_cast<size_t>(rows * kAttendKeys));
  AttendBlock b;
  b.rows = rows;
  b.key_dim = b.value_dim = dim;
  b.q = q_rows.data();
  b.visible = visible.data();
  b.keys_t = keys_t.data();
  b.values = vals.data();
  b.scale = 0.088f;
  b.max = max.data();
  b.sum = sum.data();
  b.acc = acc.data();
  b.scores = scores.data();
  const AttendKeysFn attend = attend_keys_for(level);
  for (auto _ : state) {
    attend(b);
    benchmark::DoNotOptimize(acc.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows * kAttendKeys * dim * 2),
                                               benchmark::Counter::kIsRate);
}

void register_all() {
  for (const IsaLevel level : {IsaLevel::avx2, IsaLevel::avx512})
    benchmark::RegisterBenchmark((std::string("attend/") + std::string(isa_level_name(level))).c_str(), bench_attend,
                                 level)
        ->Arg(8)
        ->Arg(64)
        ->Arg(128)
        ->ArgName("rows");
  benchmark::RegisterBenchmark("pool/dispatch", bench_dispatch)
      ->ArgsProduct({{1, 2, 4, 8, 16}, {0, 100}})
      ->ArgNames({"threads", "gap_us"})
      ->UseManualTime();
  benchmark::RegisterBenchmark("moe/qwen3-30b-a3b/q4_k", bench_moe)
      ->ArgsProduct({{1, 2, 4, 8, 16}, {1, 4, 16}, {1, 2}})
      ->ArgNames({"threads", "batch", "dispatches"})
      ->UseManualTime();
  for (DType type : {DType::q4_k, DType::q5_k, DType::q6_k, DType::iq4_xs, DType::q4_0, DType::q4_1, DType::q5_1,
                     DType::iq4_nl})
    for (Variant variant : {avx512_dot, avx512_tile, amx_tile, emulated_amx_tile, avx512_repacked, amx_repacked}) {
      const bool k_quant = type == DType::q4_k || type == DType::q5_k || type == DType::q6_k;
      if (!k_quant && (variant == amx_tile || variant == emulated_amx_tile)) continue;  // AVX-512 tiles only
      const bool on_repacked = variant == avx512_repacked || variant == amx_repacked;
      if (on_repacked && !repackable(*weight_kind_for(type))) continue;
      const char* names[] = {"avx512_dot", "avx512", "amx", "emulated_amx", "avx512_repacked", "amx_repacked"};
      const std::string name = std::string("tile/") + std::string(dtype_name(type)) + "/" + names[variant];
      const std::vector<int64_t> tokens = on_repacked ? std::vector<int64_t>{1, 4, 8, 16, 32, 64, 256}
                                                                     : std::vector<int64_t>{8, 16, 32, 64, 256};
      benchmark::RegisterBenchmark(name.c_str(), bench_tile, type, variant)
          ->ArgsProduct({{256}, tokens})
          ->ArgNames({"rows", "tokens"});
      if (on_repacked)  // a prefill MoE expert's size class, its rows coming from DRAM (18 MB)
        benchmark::RegisterBenchmark(name.c_str(), bench_tile, type, variant)
            ->ArgsProduct({{16384}, {32}})
            ->ArgNames({"rows", "tokens"});
    }
  for (DType type : {DType::q4_k, DType::q6_k}) {
    const std::string name = std::string("tile/") + std::string(dtype_name(type)) + "/amx_int8";
    benchmark::RegisterBenchmark(name.c_str(), bench_int8, type)
        ->ArgsProduct({{256}, {16, 32, 64, 256}})
        ->ArgNames({"rows", "tokens"});
    benchmark::RegisterBenchmark(name.c_str(), bench_int8, type)->ArgsProduct({{16384}, {32}})->ArgNames({"rows", "tokens"});
  }
  for (DType type : {DType::q4_k, DType::q5_k, DType::q6_k})
    for (bool repack : {false, true}) {
      if (repack && !repackable(*weight_kind_for(type))) continue;
      const std::string name = std::string("gemv/") + std::string(dtype_name(type)) + (repack ? "/repacked" : "");
      benchmark::RegisterBenchmark(name.c_str(), bench_gemv, type, repack)
          ->Args({256, 2048, 64})
          ->Args({32768, 2048, 64})
          ->Args({131072, 2048, 64})
          ->Args({131072, 2048, 16})
          ->Args({256, 768, 64})
          ->Args({131072, 768, 64})
          ->Args({131072, 768, 16})
          ->ArgNames({"rows", "in", "run"});
    }
  for (DType type : {DType::q4_k, DType::q5_k, DType::q6_k, DType::iq4_xs, DType::q8_0, DType::q4_0, DType::q5_0,
                     DType::iq4_nl, DType::bf16, DType::f16, DType::f32, DType::f8_e4m3})
    for (IsaLevel level : {IsaLevel::scalar, IsaLevel::avx2, IsaLevel::avx512}) {
      const std::string name = std::string("dot/") + std::string(dtype_name(type)) + "/" + isa_level_name(level);
      benchmark::RegisterBenchmark(name.c_str(), bench_dot, type, level)
          ->ArgsProduct({{256, 32768}, {1, 4}})
          ->ArgNames({"rows", "tokens"});
    }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
