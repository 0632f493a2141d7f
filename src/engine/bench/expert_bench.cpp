#include "tandem/engine/bench/expert_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <vector>

#include "core/environment.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/backend/stream_bandwidth.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/error.hpp"

namespace tandem {
namespace {

constexpr int kWarmupSteps = 2;
constexpr int64_t kMaxSteps = 1000000;
constexpr uint64_t kFillPieceBlocks = 4096;

struct AlignedBytes {
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<uint8_t, Free> data;
  uint64_t bytes = 0;
};

// Random blocks written by the backend's threads (first touch: pages land near the threads that
// will read them), never left as untouched zero pages that would read faster than memory.
AlignedBytes random_tensor(Backend& backend, DType dtype, float rms, uint64_t seed, uint64_t bytes) {
  AlignedBytes t;
  try {
    t.data.reset(static_cast<uint8_t*>(::operator new(bytes, std::align_val_t{64})));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory, "bench experts: cannot allocate " + std::to_string(bytes) + " bytes");
  }
  t.bytes = bytes;
  const auto block_bytes = static_cast<uint64_t>(dtype_traits(dtype).block_bytes);
  const uint64_t blocks = bytes / block_bytes;
  const auto pieces = static_cast<int64_t>((blocks + kFillPieceBlocks - 1) / kFillPieceBlocks);
  uint8_t* out = t.data.get();
  backend.parallel_for(pieces, [&](int64_t begin, int64_t end, int) {
    for (int64_t p = begin; p < end; ++p) {
      const uint64_t first = static_cast<uint64_t>(p) * kFillPieceBlocks;
      const uint64_t count = std::min(kFillPieceBlocks, blocks - first);
      fill_random_blocks(dtype, rms, seed ^ (first * 0x9e3779b97f4a7c15ull), out + first * block_bytes,
                         static_cast<int64_t>(count));
    }
  });
  return t;
}

std::vector<LinearWeight> expert_views(const AlignedBytes& merged, DType dtype, int64_t experts, int64_t rows,
                                       int64_t cols) {
  const uint64_t expert_bytes = merged.bytes / static_cast<uint64_t>(experts);
  std::vector<LinearWeight> views(static_cast<size_t>(experts));
  for (int64_t e = 0; e < experts; ++e) {
    TensorView& v = views[static_cast<size_t>(e)].weight;
    v.dtype = dtype;
    v.shape = Shape{rows, cols};
    v.data = merged.data.get() + static_cast<uint64_t>(e) * expert_bytes;
    v.nbytes = expert_bytes;
  }
  return views;
}

// The layer the bench runs: for the Q4_K_M mix, the first MoE layer past the middle that is not
// one of llama.cpp's "more bits" layers (the common case: Q4_K everywhere).
int64_t representative_layer(const SynthPreset& p, SynthQuant quant) {
  for (int64_t layer = p.layers / 2; layer < p.layers; ++layer) {
    if (!p.is_moe_layer(layer)) continue;
    const std::string down = "blk." + std::to_string(layer) + ".ffn_down_exps.weight";
    const std::string gate = "blk." + std::to_string(layer) + ".ffn_gate_exps.weight";
    if (synth_matrix_type(quant, down, p.layers, p.experts, p.moe_intermediate) ==
        synth_matrix_type(quant, gate, p.layers, p.experts, p.hidden))
      return layer;
  }
  return std::max(p.first_dense, p.layers / 2);
}

}  // namespace

ExpertBenchResult run_expert_bench(const ExpertBenchOptions& options) {
  const SynthPreset& p = synth_preset(options.preset);
  if (options.batch < 1 || options.batch > ExpertBenchOptions::kMaxBatch)
    throw Error(ErrorKind::invalid_argument, "--batch " + std::to_string(options.batch) + " is outside 1.." +
                                                 std::to_string(ExpertBenchOptions::kMaxBatch));
  if (options.threads < 0 || options.threads > 1024)
    throw Error(ErrorKind::invalid_argument, "--threads " + std::to_string(options.threads) + " is outside 0..1024");
  if (!(options.min_seconds > 0) || options.min_seconds > 3600)
    throw Error(ErrorKind::invalid_argument, "bench time must be in (0, 3600] seconds");

  ExpertBenchResult r;
  r.preset = std::string(p.name);
  r.quant = options.quant;
  r.batch = options.batch;
  r.top_k = p.top_k;
  r.experts = p.experts;
  r.hidden = p.hidden;
  r.moe_intermediate = p.moe_intermediate;
  const int64_t layer = representative_layer(p, options.quant);
  const std::string b = "blk." + std::to_string(layer) + ".";
  r.gate_type = synth_matrix_type(options.quant, b + "ffn_gate_exps.weight", p.layers, p.experts, p.hidden);
  r.up_type = synth_matrix_type(options.quant, b + "ffn_up_exps.weight", p.layers, p.experts, p.hidden);
  r.down_type = synth_matrix_type(options.quant, b + "ffn_down_exps.weight", p.layers, p.experts, p.moe_intermediate);
  const uint64_t gate_expert = *row_bytes(r.gate_type, p.hidden) * static_cast<uint64_t>(p.moe_intermediate);
  const uint64_t up_expert = *row_bytes(r.up_type, p.hidden) * static_cast<uint64_t>(p.moe_intermediate);
  const uint64_t down_expert = *row_bytes(r.down_type, p.moe_intermediate) * static_cast<uint64_t>(p.hidden);
  const uint64_t expert_bytes = gate_expert + up_expert + down_expert;
  r.layer_bytes = expert_bytes * static_cast<uint64_t>(p.experts);
  r.layer_copies =
      static_cast<int64_t>(std::max<uint64_t>(1, (options.stream_bytes + r.layer_bytes - 1) / r.layer_bytes));
  // A repacked copy (at most 1.056 × the bytes, kept beside the originals the views read) per layer copy.
  const bool repack = cpu_repack_enabled(options.repack) &&
                      options.kernels == CpuKernels::fast;
  const uint64_t footprint = repack ? r.layer_bytes + r.layer_bytes / 1000 * 1056 : r.layer_bytes;
  const auto memory = static_cast<uint64_t>(physical_memory_bytes());
  if (memory && footprint + options.stream_bytes > memory / 10 * 8)
    throw Error(ErrorKind::out_of_memory, "bench experts: one " + std::string(p.name) + " layer (" +
                                              std::to_string(r.layer_bytes >> 20) + " MiB) and the stream probe do not fit in 80% of this machine's " +
                                              std::to_string(memory >> 20) + " MiB");
  // Fewer copies where memory is short: the figure then says how many it cycled through.
  if (memory)
    r.layer_copies = std::clamp<int64_t>(
        static_cast<int64_t>((memory / 10 * 8 - options.stream_bytes) / footprint), 1, r.layer_copies);

  auto backend = make_cpu_backend(options.threads, options.kernels);
  r.threads = backend->threads();
  StreamReadOptions stream;
  stream.buffer_bytes = options.stream_bytes;
  r.stream_read_gbps = measure_stream_read_gbps(*backend, stream);

  const auto e = static_cast<uint64_t>(p.experts);
  const float in_rms = 1.0f / std::sqrt(static_cast<float>(p.hidden));
  std::vector<AlignedBytes> storage;
  std::vector<ExpertWeights> layers(static_cast<size_t>(r.layer_copies));
  for (int64_t c = 0; c < r.layer_copies; ++c) {
    const uint64_t seed = (options.seed + static_cast<uint64_t>(c)) * 3;
    storage.push_back(random_tensor(*backend, r.gate_type, in_rms, seed + 0, gate_expert * e));
    layers[static_cast<size_t>(c)].gate = expert_views(storage.back(), r.gate_type, p.experts, p.moe_intermediate, p.hidden);
    storage.push_back(random_tensor(*backend, r.up_type, in_rms, seed + 1, up_expert * e));
    layers[static_cast<size_t>(c)].up = expert_views(storage.back(), r.up_type, p.experts, p.moe_intermediate, p.hidden);
    storage.push_back(random_tensor(*backend, r.down_type, 0.05f / std::sqrt(static_cast<float>(p.moe_intermediate)),
                                    seed + 2, down_expert * e));
    layers[static_cast<size_t>(c)].down = expert_views(storage.back(), r.down_type, p.experts, p.hidden, p.moe_intermediate);
  }
  if (repack)
    for (const ExpertWeights& copy : layers)
      for (const auto* set : {&copy.gate, &copy.up, &copy.down})
        for (const LinearWeight& w : *set) backend->prepare(WeightGroup::experts, w);
  r.repacked_bytes = cpu_backend_repacked_bytes(*backend);

  const auto tokens = static_cast<size_t>(options.batch);
  const auto k = static_cast<size_t>(p.top_k);
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(tokens * static_cast<size_t>(p.hidden)), out(x.size());
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> ids(tokens * k), all(e);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<float> route_weights(tokens * k, 1.0f / static_cast<float>(k));
  std::vector<bool> hit(e);
  // Random top-k per token: distinct experts, uniform (a partial Fisher-Yates shuffle).
  auto route = [&]() {
    std::fill(hit.begin(), hit.end(), false);
    for (size_t t = 0; t < tokens; ++t) {
      for (size_t i = 0; i < k; ++i) {
        std::uniform_int_distribution<size_t> pick(i, e - 1);
        std::swap(all[i], all[pick(rng)]);
        ids[t * k + i] = all[i];
        hit[static_cast<size_t>(all[i])] = true;
      }
    }
    return static_cast<uint64_t>(std::count(hit.begin(), hit.end(), true));
  };
  int64_t next_layer = 0;
  auto step = [&]() {
    const ExpertWeights& weights = layers[static_cast<size_t>(next_layer)];
    next_layer = (next_layer + 1) % r.layer_copies;
    backend->moe_routed_experts(weights, x.data(), options.batch, p.hidden, ids.data(), route_weights.data(),
                                p.top_k, out.data());
    backend->synchronize();
  };
  for (int i = 0; i < kWarmupSteps; ++i) {
    route();
    step();
  }
  double seconds = 0;
  uint64_t bytes = 0;
  int64_t steps = 0;
  while ((seconds < options.min_seconds || steps < 3) && steps < kMaxSteps) {
    bytes += route() * expert_bytes;
    const auto start = std::chrono::steady_clock::now();
    step();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++steps;
  }
  // Probed again after the steps, keeping the better figure: on a shared machine one probe can
  // land in a busy moment, and a low stream figure would flatter the ratio.
  r.stream_read_gbps = std::max(r.stream_read_gbps, measure_stream_read_gbps(*backend, stream));
  for (float v : out)
    if (!std::isfinite(v)) throw Error(ErrorKind::internal, "bench experts: the MoE layer produced a non-finite value");

  r.steps = steps;
  r.seconds_per_step = seconds / static_cast<double>(steps);
  r.expert_bytes_per_step = static_cast<double>(bytes) / static_cast<double>(steps);
  r.achieved_gbps = static_cast<double>(bytes) / seconds / 1e9;
  r.ratio = r.achieved_gbps / r.stream_read_gbps;
  const double flops_per_step = 2.0 * 3.0 * static_cast<double>(p.hidden) * static_cast<double>(p.moe_intermediate) *
                                static_cast<double>(options.batch) * static_cast<double>(p.top_k);
  r.tflops = flops_per_step / r.seconds_per_step / 1e12;
  return r;
}

}  // namespace tandem
