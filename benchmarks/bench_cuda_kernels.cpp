// The CUDA kernels of one decode step alone, at the shapes of a Qwen3-30B-A3B layer (hidden 2048,
// 32 query heads and 4 KV heads of 128, 128 experts of 768, top 8) and a DeepSeek-V3 MLA layer:
// each benchmark records 32 back-to-back calls into a CUDA graph (as a decode step replays them)
// and reports the time per call and the weight or KV bytes read per second, so the per-kernel
// latency that bounds decode is visible without a profiler. Skips without a GPU.
#include <benchmark/benchmark.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/cuda/blas_gemm.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/cuda/moe_blas.hpp"
#include "tandem/tensor/dtype.hpp"

using namespace tandem;

namespace {

constexpr int kCallsPerGraph = 32;

struct Gpu {
  cuda::Stream stream{0};
  std::mt19937 rng{7};
  std::vector<cuda::DeviceBuffer> buffers;

  // Bytes small enough that no weight type decodes to NaN or Inf.
  void* random_bytes(size_t bytes) {
    std::vector<uint8_t> host(bytes);
    for (auto& b : host) b = static_cast<uint8_t>(rng() & 0x3b);
    buffers.emplace_back(0, bytes);
    buffers.back().upload(host.data(), bytes);
    return buffers.back().data();
  }
  float* random_floats(size_t count) {
    std::vector<float> host(count);
    for (auto& v : host) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
    buffers.emplace_back(0, count * 4);
    buffers.back().upload(host.data(), count * 4);
    return static_cast<float*>(buffers.back().data());
  }
  template <typename T>
  T* upload(const std::vector<T>& host) {
    buffers.emplace_back(0, host.size() * sizeof(T));
    buffers.back().upload(host.data(), host.size() * sizeof(T));
    return static_cast<T*>(buffers.back().data());
  }
};

void report_bytes(benchmark::State& state, double bytes) {
  state.counters["bytes/call"] = bytes;
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9 * static_cast<double>(state.iterations()),
                                              benchmark::Counter::kIsRate);
}

// Times `call` replayed kCallsPerGraph times per graph launch; bytes: what one call reads.
void run_timed(benchmark::State& state, Gpu& gpu, const std::function<void()>& call, double bytes) {
  call();  // first call outside the graph: lazy module loading, warm caches
  gpu.stream.synchronize();
  cuda::Graph::begin_capture(gpu.stream);
  for (int i = 0; i < kCallsPerGraph; ++i) call();
  cuda::Graph graph = cuda::Graph::end_capture(gpu.stream);
  if (graph.empty()) {
    state.SkipWithError("the calls could not be recorded");
    return;
  }
  graph.launch(gpu.stream);
  gpu.stream.synchronize();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    graph.launch(gpu.stream);
    gpu.stream.synchronize();
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    state.SetIterationTime(dt.count() / kCallsPerGraph);
  }
  report_bytes(state, bytes);
}

// The same for a call that waits for the stream itself (it cannot be recorded): each call timed alone.
void run_eager(benchmark::State& state, Gpu& gpu, const std::function<void()>& call, double bytes) {
  call();
  gpu.stream.synchronize();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    gpu.stream.synchronize();
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    state.SetIterationTime(dt.count());
  }
  report_bytes(state, bytes);
}

bool have_gpu(benchmark::State& state) {
  if (cuda::device_count() > 0) return true;
  state.SkipWithError("no CUDA GPU");
  return false;
}

int64_t stored_row_bytes(DType type, int64_t in) { return static_cast<int64_t>(*row_bytes(type, in)); }

// y = W x for one token (or a few): range(0) out, range(1) in, range(2) tokens, range(3) the
// tensor-core math of 32+ tokens (0 bf16 tiles, 1 3xTF32 tiles, 2 the weight dequantised to bf16 and
// cuBLAS, as the CUDA backend does from 256 tokens; 3 one token on int8 activations).
void bench_linear(benchmark::State& state, DType type) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t out = state.range(0), in = state.range(1), tokens = state.range(2);
  const size_t wbytes = static_cast<size_t>(out * stored_row_bytes(type, in));
  const cuda::DeviceWeight w{type, gpu.random_bytes(wbytes), out, in, nullptr, nullptr};
  const float* x = gpu.random_floats(static_cast<size_t>(in * tokens));
  float* y = gpu.random_floats(static_cast<size_t>(out * tokens));
  const auto math = state.range(3) == 0 ? cuda::TensorCoreMath::bf16 : cuda::TensorCoreMath::tf32x3;
  cuda::BlasGemm blas(0);
  if (state.range(3) == 2) {
    if (!blas.available()) {
      state.SkipWithError(("no cuBLAS: " + blas.why_not()).c_str());
      return;
    }
    gpu.buffers.emplace_back(0, static_cast<size_t>(out * in) * 2);
    void* w16 = gpu.buffers.back().data();
    gpu.buffers.emplace_back(0, static_cast<size_t>(tokens * in) * 2);
    void* x16 = gpu.buffers.back().data();
    run_timed(
        state, gpu,
        [&] {
          cuda::dequantize_bf16(gpu.stream, w, w16);
          cuda::round_bf16(gpu.stream, x, tokens * in, x16);
          blas.gemm_bf16(gpu.stream, w16, x16, tokens, out, in, y);
        },
        static_cast<double>(wbytes));
  } else {
    // math 3: one token's int8 activations (dp4a), as decode runs Q4_K/Q6_K rows
    const bool quantised_x = state.range(3) == 3;
    run_timed(state, gpu, [&] { cuda::linear(gpu.stream, w, x, tokens, y, math, quantised_x); },
              static_cast<double>(wbytes));
  }
  state.counters["TFLOP/s"] = benchmark::Counter(2e-12 * static_cast<double>(out * in * tokens) *
                                                     static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

// One layer's routed experts, pair by pair: range(0) tokens; 128 experts of hidden 2048 ×
// intermediate 768, top 8 (Qwen3-30B-A3B), gate/up Q4_K, down `down`; pair by pair or grouped by
// expert (prefill). Bytes: the expert rows each pair reads.
enum class MoeRun { pairs, grouped, blas };
void bench_moe(benchmark::State& state, DType down, MoeRun how, cuda::GroupedTiles tiles,
               cuda::TensorCoreMath math) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t tokens = state.range(0), experts = 128, hidden = 2048, inter = 768, top_k = 8;
  cuda::ExpertTable t;
  t.experts = experts;
  t.intermediate = inter;
  t.gate_type = t.up_type = DType::q4_k;
  t.down_type = down;
  t.gate_row_bytes = t.up_row_bytes = stored_row_bytes(DType::q4_k, hidden);
  t.down_row_bytes = stored_row_bytes(down, inter);
  std::vector<const void*> gate(experts), up(experts), dn(experts);
  for (int64_t e = 0; e < experts; ++e) {
    gate[e] = gpu.random_bytes(static_cast<size_t>(inter * t.gate_row_bytes));
    up[e] = gpu.random_bytes(static_cast<size_t>(inter * t.up_row_bytes));
    dn[e] = gpu.random_bytes(static_cast<size_t>(hidden * t.down_row_bytes));
  }
  t.gate = gpu.upload(gate);
  t.up = gpu.upload(up);
  t.down = gpu.upload(dn);
  std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
  std::vector<float> weights(ids.size(), 0.125f);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(gpu.rng() % experts);
  const int32_t* d_ids = gpu.upload(ids);
  const float* d_weights = gpu.upload(weights);
  const float* x = gpu.random_floats(static_cast<size_t>(tokens * hidden));
  float* act = gpu.random_floats(static_cast<size_t>(tokens * top_k * inter));
  float* y = gpu.random_floats(static_cast<size_t>(tokens * hidden));
  const double bytes = static_cast<double>(tokens * top_k * inter * (2 * t.gate_row_bytes) +
                                           tokens * top_k * hidden * t.down_row_bytes);
  cuda::BlasGemm blas(0);
  cuda::MoeBlasHost host;
  if (how == MoeRun::blas) {
    if (!blas.available()) {
      state.SkipWithError(("no cuBLAS: " + blas.why_not()).c_str());
      return;
    }
    gpu.buffers.emplace_back(0, static_cast<size_t>(cuda::moe_blas_scratch_bytes(t, tokens, hidden, top_k)));
    void* work = gpu.buffers.back().data();
    run_eager(
        state, gpu,
        [&] { cuda::moe_blas(gpu.stream, blas, t, x, tokens, hidden, d_ids, d_weights, top_k, work, host, y); },
        bytes);
  } else if (how == MoeRun::grouped) {
    gpu.buffers.emplace_back(0, static_cast<size_t>(cuda::moe_grouped_scratch_bytes(t, tokens, hidden, top_k)));
    void* work = gpu.buffers.back().data();
    run_timed(state, gpu,
              [&] { cuda::moe_grouped(gpu.stream, t, x, tokens, hidden, d_ids, d_weights, top_k, work, y, tiles, math); }, bytes);
  } else {
    run_timed(state, gpu,
              [&] { cuda::moe_by_pairs(gpu.stream, t, x, tokens, hidden, d_ids, d_weights, top_k, act, tokens * top_k * inter, y); },
              bytes);
  }
  state.counters["TFLOP/s"] = benchmark::Counter(2e-12 * static_cast<double>(tokens * top_k * 3 * inter * hidden) *
                                                     static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

// A paged f16 cache of one layer (block_tokens 16), every token of the batch at position
// range(0) − 1 of its own sequence; range(1) tokens.
struct PagedCache {
  cuda::PagedKv kv;
  cuda::DeviceBatch batch;
  float* scores = nullptr;
  double bytes = 0;
};
PagedCache paged_cache(Gpu& gpu, int64_t context, int64_t tokens, int64_t row_values, int64_t planes, int64_t heads) {
  PagedCache c;
  const int64_t bt = 16, blocks_per_seq = (context + bt - 1) / bt;
  c.kv.type = KvType::f16;
  c.kv.block_tokens = bt;
  c.kv.row_bytes = row_values * 2;
  c.kv.block_stride = planes * bt * c.kv.row_bytes;
  c.kv.layer_base = gpu.random_bytes(static_cast<size_t>(tokens * blocks_per_seq * c.kv.block_stride));
  std::vector<int32_t> tables(static_cast<size_t>(tokens * blocks_per_seq));
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  std::vector<int64_t> positions(static_cast<size_t>(tokens), context - 1);
  c.batch.tokens = tokens;
  c.batch.positions = gpu.upload(positions);
  c.batch.block_tables = gpu.upload(tables);
  c.batch.table_stride = blocks_per_seq;
  c.batch.max_context = blocks_per_seq * bt;
  c.scores = gpu.random_floats(static_cast<size_t>(
      std::max(cuda::gqa_attention_scratch_floats(c.batch, heads, 4, 128),
               cuda::mla_attention_scratch_floats(c.batch, heads, 512))));
  c.bytes = static_cast<double>(tokens * context * planes * c.kv.row_bytes);
  return c;
}

// Qwen3-30B-A3B's GQA decode: range(0) context, range(1) tokens (sequences).
void bench_gqa(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t heads = 32, kv_heads = 4, dim = 128, tokens = state.range(1);
  PagedCache c = paged_cache(gpu, state.range(0), tokens, kv_heads * dim, 2, heads);
  const float* q = gpu.random_floats(static_cast<size_t>(tokens * heads * dim));
  float* out = gpu.random_floats(static_cast<size_t>(tokens * heads * dim));
  run_timed(state, gpu,
            [&] { cuda::gqa_attention(gpu.stream, c.kv, c.batch, q, heads, kv_heads, dim, 0.088f, c.scores, out); },
            c.bytes);
}

// Qwen3-30B-A3B's GQA over one sequence's prompt chunk (causal): range(0) query tokens at positions
// range(2) … range(2) + range(0) − 1 (range(2) positions already cached: a prefix hit's suffix pass);
// range(1) 1: the tensor-core flash kernel, 2: the same never splitting the cached positions among
// blocks (no scratch), 0: the float32 split-K kernel it replaces in prefill.
void bench_gqa_prefill(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t heads = 32, kv_heads = 4, dim = 128, tokens = state.range(0), cached = state.range(2);
  const int64_t context = cached + tokens;
  PagedCache c = paged_cache(gpu, context, 1, kv_heads * dim, 2, heads);
  // Small finite halves (random bytes could be NaN): sign, exponent 0x0e (~2^-1), random mantissa.
  std::vector<uint16_t> halves(static_cast<size_t>(c.kv.block_stride / 2 * ((context + 15) / 16)));
  for (auto& h : halves) h = static_cast<uint16_t>((gpu.rng() & 0x83ffu) | 0x3800u);
  c.kv.layer_base = gpu.upload(halves);
  std::vector<int32_t> table(static_cast<size_t>(c.batch.table_stride)), rows;
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int64_t> positions;
  for (int64_t t = 0; t < tokens; ++t) {
    rows.insert(rows.end(), table.begin(), table.end());
    positions.push_back(cached + t);
  }
  c.batch.tokens = tokens;
  c.batch.positions = gpu.upload(positions);
  c.batch.block_tables = gpu.upload(rows);
  c.batch.one_sequence = true;
  c.scores = gpu.random_floats(static_cast<size_t>(cuda::gqa_attention_scratch_floats(c.batch, heads, kv_heads, dim)));
  const float* q = gpu.random_floats(static_cast<size_t>(tokens * heads * dim));
  float* out = gpu.random_floats(static_cast<size_t>(tokens * heads * dim));
  const bool flash = state.range(1) != 0;
  float* split_scratch = state.range(1) == 1 ? gpu.random_floats(static_cast<size_t>(std::max<int64_t>(
                                     1, cuda::flash_attention_scratch_floats(c.batch, heads, dim))))
                               : nullptr;
  run_timed(state, gpu,
            [&] {
              if (flash)
                cuda::flash_gqa_attention(gpu.stream, c.kv, c.batch, q, heads, kv_heads, dim, 0.088f, split_scratch,
                                          out);
              else cuda::gqa_attention(gpu.stream, c.kv, c.batch, q, heads, kv_heads, dim, 0.088f, c.scores, out);
            },
            static_cast<double>(context * 2 * kv_heads * dim * 2));
  // Q·Kᵀ and P·V over the keys each query sees: 2 · 2 · dim multiply-adds per (head, query, key ≤ query).
  const double pairs = static_cast<double>(tokens) * static_cast<double>(cached) +
                       static_cast<double>(tokens) * static_cast<double>(tokens + 1) / 2;
  state.counters["TFLOP/s"] = benchmark::Counter(
      4.0 * static_cast<double>(heads * dim) * pairs * 1e-12 * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}

// DeepSeek-V3's absorbed MLA decode (128 heads, latent 512 + rope 64): range(0) context, range(1)
// tokens (sequences). cuda_cores: the float32 CUDA-core split kernel (TANDEM_CUDA_MLA_TC=0 while the
// calls are recorded), else what mla_attention picks for an f16 cache (the tensor-core kernel).
void bench_mla(benchmark::State& state, bool cuda_cores) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t heads = 128, lora = 512, rope = 64, tokens = state.range(1);
  PagedCache c = paged_cache(gpu, state.range(0), tokens, lora + rope, 1, heads);
  const float* ql = gpu.random_floats(static_cast<size_t>(tokens * heads * lora));
  const float* qr = gpu.random_floats(static_cast<size_t>(tokens * heads * rope));
  float* out = gpu.random_floats(static_cast<size_t>(tokens * heads * lora));
  const char* previous = std::getenv("TANDEM_CUDA_MLA_TC");
  const std::string saved = previous != nullptr ? previous : "";
  if (cuda_cores) setenv("TANDEM_CUDA_MLA_TC", "0", 1);
  state.counters["tensor_cores"] = cuda::mla_attention_tensor_cores(c.batch, heads, lora, rope, c.kv) ? 1 : 0;
  run_timed(state, gpu,
            [&] { cuda::mla_attention(gpu.stream, c.kv, c.batch, ql, qr, heads, lora, rope, 0.07f, c.scores, out); },
            c.bytes);
  if (previous != nullptr) setenv("TANDEM_CUDA_MLA_TC", saved.c_str(), 1);
  else unsetenv("TANDEM_CUDA_MLA_TC");
  // Q·Kᵀ over latent + rope and P·V over the latent: 2 · (576 + 512) flops per head and position.
  state.counters["TFLOP/s"] = benchmark::Counter(
      2e-12 * static_cast<double>(heads * (lora + rope + lora)) * static_cast<double>(tokens * state.range(0)) *
          static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}

// Router top-k: range(0) tokens; range(1) kind (0 Qwen3 softmax 128/8, 2 DeepSeek-V3 sigmoid 256/8
// in 8 groups of which 4 kept).
void bench_router(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t tokens = state.range(0);
  cuda::RouterSpec spec;
  spec.kind = static_cast<int>(state.range(1));
  spec.experts = spec.kind == 2 ? 256 : 128;
  spec.top_k = 8;
  if (spec.kind == 2) {
    spec.n_group = 8;
    spec.topk_group = 4;
    spec.norm_topk_prob = true;
    spec.routed_scaling_factor = 2.5;
  }
  const float* logits = gpu.random_floats(static_cast<size_t>(tokens * spec.experts));
  const float* bias = spec.kind == 2 ? gpu.random_floats(static_cast<size_t>(spec.experts)) : nullptr;
  gpu.buffers.emplace_back(0, static_cast<size_t>(tokens * (2 * spec.experts + spec.n_group)) * sizeof(double));
  auto* scratch = static_cast<double*>(gpu.buffers.back().data());
  gpu.buffers.emplace_back(0, static_cast<size_t>(tokens * spec.top_k) * 4);
  auto* ids = static_cast<int32_t*>(gpu.buffers.back().data());
  float* weights = gpu.random_floats(static_cast<size_t>(tokens * spec.top_k));
  run_timed(state, gpu, [&] { cuda::router_topk(gpu.stream, spec, logits, tokens, bias, scratch, ids, weights); },
            static_cast<double>(tokens * spec.experts * 4));
}

// RMSNorm of range(0) rows of range(1) values (2048: the hidden state; 128: q/k norm per head).
void bench_rms_norm(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t rows = state.range(0), dim = state.range(1);
  float* x = gpu.random_floats(static_cast<size_t>(rows * dim));
  const float* w = gpu.random_floats(static_cast<size_t>(dim));
  float* y = gpu.random_floats(static_cast<size_t>(rows * dim));
  run_timed(state, gpu, [&] { cuda::rms_norm(gpu.stream, x, w, rows, dim, 1e-6f, y); },
            static_cast<double>(rows * dim * 4));
}

// RoPE (neox) over 32 query heads of 128 for range(0) tokens.
void bench_rope(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t tokens = state.range(0), heads = 32, dim = 128;
  float* data = gpu.random_floats(static_cast<size_t>(tokens * heads * dim));
  std::vector<int64_t> positions(static_cast<size_t>(tokens), 100);
  std::vector<double> inv(static_cast<size_t>(dim / 2));
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0 / std::pow(1e6, 2.0 * static_cast<double>(i) / dim);
  const int64_t* d_pos = gpu.upload(positions);
  const double* d_inv = gpu.upload(inv);
  run_timed(state, gpu,
            [&] { cuda::rope(gpu.stream, data, tokens, heads * dim, heads, dim, d_pos, d_inv, dim, true, 1.0); },
            static_cast<double>(tokens * heads * dim * 4));
}

void bench_add(benchmark::State& state) {
  if (!have_gpu(state)) return;
  Gpu gpu;
  const int64_t n = state.range(0);
  const float* a = gpu.random_floats(static_cast<size_t>(n));
  float* b = gpu.random_floats(static_cast<size_t>(n));
  run_timed(state, gpu, [&] { cuda::add(gpu.stream, a, b, n, b); }, static_cast<double>(n * 8));
}

void register_all() {
  const auto manual = [](benchmark::internal::Benchmark* b) { b->UseManualTime()->Unit(benchmark::kMicrosecond); };
  // q (2048→4096), k/v (2048→512), o (4096→2048), the output matrix (2048→151936), router (2048→128).
  for (DType type : {DType::q4_k, DType::q6_k, DType::q8_0, DType::bf16, DType::f32}) {
    auto* b = benchmark::RegisterBenchmark((std::string("linear/") + std::string(dtype_name(type))).c_str(),
                                           bench_linear, type);
    manual(b);
    for (auto [out, in] : {std::pair<int64_t, int64_t>{4096, 2048}, {512, 2048}, {2048, 4096}, {128, 2048}})
      for (int64_t tokens : {1, 4, 16}) b->Args({out, in, tokens, 0});
    for (int64_t math : {0, 1}) b->Args({4096, 2048, 512, math});  // prefill: the tensor-core tiles
    b->Args({4096, 2048, 4096, 0});
    if (type == DType::q4_k || type == DType::q6_k || type == DType::bf16)
      for (int64_t tokens : {256, 512, 4096}) b->Args({4096, 2048, tokens, 2});
    if (type == DType::q6_k) b->Args({151936, 2048, 1, 0});
    if (type == DType::q4_k || type == DType::q6_k)
      for (auto [out, in] : {std::pair<int64_t, int64_t>{4096, 2048}, {151936, 2048}}) b->Args({out, in, 1, 3});
  }
  using cuda::GroupedTiles, cuda::TensorCoreMath;
  const auto moe = [&](const char* name, DType down, MoeRun how, GroupedTiles tiles, TensorCoreMath math,
                       std::initializer_list<int64_t> tokens) {
    auto* b = benchmark::RegisterBenchmark((std::string(name) + "down_" + std::string(dtype_name(down))).c_str(),
                                           bench_moe, down, how, tiles, math);
    for (int64_t t : tokens) b->Arg(t);
    manual(b);
  };
  for (DType down : {DType::q4_k, DType::q6_k}) {
    moe("moe_pairs/", down, MoeRun::pairs, GroupedTiles::automatic, TensorCoreMath::bf16, {1, 4, 16});
    for (auto [name, tiles, math] : {std::tuple{"moe_grouped/", GroupedTiles::automatic, TensorCoreMath::bf16},
                                     std::tuple{"moe_grouped_cuda_cores/", GroupedTiles::cuda_cores, TensorCoreMath::bf16},
                                     std::tuple{"moe_grouped_tensor_cores/", GroupedTiles::tensor_cores, TensorCoreMath::bf16},
                                     std::tuple{"moe_grouped_tf32x3/", GroupedTiles::tensor_cores, TensorCoreMath::tf32x3}})
      moe(name, down, MoeRun::grouped, tiles, math, {32, 64, 256, 512, 4096});
    // Through cuBLAS (the CUDA backend's path from kBlasMoePairsPerExpert pairs per expert): eager,
    // each call waits for the stream once for the grouping.
    moe("moe_blas/", down, MoeRun::blas, GroupedTiles::automatic, TensorCoreMath::bf16, {512, 1024, 4096});
  }
  manual(benchmark::RegisterBenchmark("gqa_attention/f16", bench_gqa)
             ->Args({64, 1})
             ->Args({1024, 1})
             ->Args({4096, 1})
             ->Args({32768, 1})
             ->Args({1024, 16})
             ->Args({512, 512}));
  manual(benchmark::RegisterBenchmark("gqa_prefill/f16", bench_gqa_prefill)
             ->Args({512, 0, 0})
             ->Args({512, 1, 0})
             ->Args({4096, 0, 0})
             ->Args({4096, 1, 0})
             ->Args({256, 1, 7936})
             ->Args({256, 2, 7936})
             ->Args({1024, 1, 7168})
             ->Args({1024, 2, 7168}));
  manual(benchmark::RegisterBenchmark("mla_attention/f16", bench_mla, false)
             ->Args({64, 1})
             ->Args({4096, 1})
             ->Args({32768, 1})
             ->Args({512, 16})
             ->Args({512, 512}));
  // The float32 kernel the tensor cores replace, in the same run (the ratio at each context).
  manual(benchmark::RegisterBenchmark("mla_attention_cuda_cores/f16", bench_mla, true)
             ->Args({64, 1})
             ->Args({4096, 1})
             ->Args({32768, 1})
             ->Args({512, 16}));
  manual(benchmark::RegisterBenchmark("router_topk", bench_router)->Args({1, 0})->Args({16, 0})->Args({1, 2})->Args({16, 2}));
  manual(benchmark::RegisterBenchmark("rms_norm", bench_rms_norm)->Args({1, 2048})->Args({32, 128})->Args({16, 2048}));
  manual(benchmark::RegisterBenchmark("rope", bench_rope)->Arg(1)->Arg(16));
  manual(benchmark::RegisterBenchmark("add", bench_add)->Arg(2048)->Arg(16 * 2048));
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
