#include "tandem/engine/bench/model_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "tandem/backend/backend.hpp"
#include "tandem/backend/stream_bandwidth.hpp"
#include "tandem/engine/bench/routing_spread.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/model/weight_roles.hpp"
#include "tandem/model/weight_summary.hpp"

namespace tandem {
namespace {

constexpr int64_t kMaxBenchContext = 65536;

struct MeanSd {
  double mean = 0, sd = 0;
};

MeanSd mean_sd(const std::vector<double>& v) {
  MeanSd r;
  if (v.empty()) return r;
  for (double x : v) r.mean += x;
  r.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double sq = 0;
    for (double x : v) sq += (x - r.mean) * (x - r.mean);
    r.sd = std::sqrt(sq / static_cast<double>(v.size() - 1));  // sample sd, as llama-bench
  }
  return r;
}

double decode_bytes_per_token(const Weights& w, const ModelConfig& c) {
  double bytes = 0;
  std::vector<double> expert_bytes(w.layers.size());
  for_each_weight_tensor(w, [&](WeightGroup group, int64_t layer, const TensorView& v, auto) {
    if (v.empty()) return;
    if (group == WeightGroup::embedding)
      bytes += static_cast<double>(v.nbytes) / static_cast<double>(c.vocab_size);  // one row
    else if (group == WeightGroup::experts)
      expert_bytes[static_cast<size_t>(layer)] += static_cast<double>(v.nbytes);
    else
      bytes += static_cast<double>(v.nbytes);
  });
  for (size_t l = 0; l < w.layers.size(); ++l)
    if (w.layers[l].is_moe && c.num_experts > 0)
      bytes += expert_bytes[l] / static_cast<double>(c.num_experts) * static_cast<double>(c.num_experts_per_tok);
  return bytes;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

ModelBenchResult run_model_bench(const ModelBenchOptions& o) {
  if (o.reps < 1 || o.reps > ModelBenchOptions::kMaxReps)
    throw Error(ErrorKind::out_of_range, "-r " + std::to_string(o.reps) + " is outside 1.." +
                                             std::to_string(ModelBenchOptions::kMaxReps));
  if (o.threads < 0 || o.threads > 1024)
    throw Error(ErrorKind::invalid_argument, "-t " + std::to_string(o.threads) + " is outside 0..1024");
  const ModelFiles files = open_model_files(o.model_path);
  const ModelConfig& c = files.config;
  const int64_t context = std::min(kMaxBenchContext, c.max_position_embeddings > 0 ? c.max_position_embeddings : kMaxBenchContext);
  auto check_tokens = [&](const char* flag, int64_t n) {
    if (n < 1 || n > context)
      throw Error(ErrorKind::out_of_range, std::string(flag) + " " + std::to_string(n) + " is outside 1.." +
                                               std::to_string(context) + " (the model's context, at most " +
                                               std::to_string(kMaxBenchContext) + ")");
  };
  check_tokens("-p", o.prompt_tokens);
  check_tokens("-n", o.gen_tokens);
  if (o.depth < 0) throw Error(ErrorKind::invalid_argument, "-d " + std::to_string(o.depth) + " is negative");
  if (o.depth + std::max(o.prompt_tokens, o.gen_tokens) > context)
    throw Error(ErrorKind::out_of_range, "-d " + std::to_string(o.depth) + " leaves no room for the tests in " +
                                             std::to_string(context) + " tokens of context (the depth plus -p or -n)");
  if (o.spread_tokens != 0) check_tokens("--spread-tokens", o.spread_tokens);

  ModelBenchResult r;
  {
    const Weights weights = bind_weights(files);
    r.decode_bytes_per_token = decode_bytes_per_token(weights, c);
    const WeightSummary summary = summarize_weights(weights);
    r.model_bytes = static_cast<int64_t>(summary.total_bytes());
    r.parameters = summary.parameters;
  }

  LoadOptions load;
  load.threads = o.threads;
  load.max_sessions = 1;
  load.max_context_tokens = o.depth + std::max<int64_t>({o.prompt_tokens, o.gen_tokens, 33});  // 33: the warm-up
  load.load_tokenizer = false;
  load.cpu_kernels = o.kernels;
  load.placement = o.placement;
  load.placement_flags = o.placement_flags;
  load.gpu_by_default = o.gpu_by_default;
  load.defer_experts = o.defer_experts;
  load.kv_type = o.kv_type;
  // A negative ubatch reaches Engine::load, which refuses it; none is longer than the bench's context.
  if (o.ubatch != 0) load.max_batch_tokens = o.ubatch;
  load.max_batch_tokens = std::min(load.max_batch_tokens, load.max_context_tokens);
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.vocab_size - 1));
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& id : ids) id = pick(rng);
    return ids;
  };
  {
    const auto engine = Engine::load(o.model_path, load);
    r.warnings = engine->warnings();
    r.placement = engine->placement().to_string();
    r.ubatch = engine->options().max_batch_tokens;
    r.stream_experts_min_tokens = engine->stream_experts_min_tokens();
    auto probe_stream = [&] {
      auto backend = make_cpu_backend(o.threads, o.kernels);  // the same threads as the engine's
      r.threads = backend->threads();
      StreamReadOptions stream;
      stream.buffer_bytes = o.stream_bytes;
      // Probed before and after the tests, keeping the better figure (a shared machine has busy moments).
      r.stream_read_gbps = std::max(r.stream_read_gbps, measure_stream_read_gbps(*backend, stream));
    };
    probe_stream();
    auto session = engine->new_session();
    // Warm-up (as llama-bench): pages of the mapping, scratch, caches, and the prompt's own pass
    // sizes, so a backend's first use of a large-batch path (cuBLAS loading its kernels, working
    // memory growing) is not timed: a 32-token warm-up left ~0.3 s of that in the first pp4096.
    session->prefill(random_ids(std::max<int64_t>(o.prompt_tokens, 1)));
    session->reset();
    session->decode(pick(rng));
    // The warm-up was a request: the expert cache now holds what it routed to most.
    engine->refresh_expert_cache();
    const ForwardPass::ExpertCacheStats cache_before = engine->expert_cache_stats();
    std::vector<double> pp, tg;
    // Each test starts from an empty cache, or from `depth` cached tokens of context (not timed).
    auto start_test = [&] {
      session->reset();
      if (o.depth == 0) return;
      const int64_t before = engine->scheduler().stats().session_chunks;
      session->prefill(random_ids(o.depth));
      r.depth_passes = engine->scheduler().stats().session_chunks - before;
    };
    for (int rep = 0; rep < o.reps; ++rep) {
      start_test();
      const std::vector<int32_t> prompt = random_ids(o.prompt_tokens);
      const int64_t chunks_before = engine->scheduler().stats().session_chunks;
      const auto start = std::chrono::steady_clock::now();
      session->prefill(prompt);
      pp.push_back(static_cast<double>(o.prompt_tokens) / seconds_since(start));
      r.prefill_passes = engine->scheduler().stats().session_chunks - chunks_before;
    }
    for (int rep = 0; rep < o.reps; ++rep) {
      start_test();
      const std::vector<int32_t> ids = random_ids(o.gen_tokens);
      const auto start = std::chrono::steady_clock::now();
      for (int32_t id : ids) session->decode(id);
      tg.push_back(static_cast<double>(o.gen_tokens) / seconds_since(start));
    }
    const ForwardPass::ExpertCacheStats cache = engine->expert_cache_stats();
    r.expert_cache_per_layer = cache.experts_per_layer;
    r.expert_cache_layers = cache.layers;
    if (cache.counted_pairs > cache_before.counted_pairs)
      r.expert_cache_held_fraction = static_cast<double>(cache.held_pairs - cache_before.held_pairs) /
                                     static_cast<double>(cache.counted_pairs - cache_before.counted_pairs);
    probe_stream();
    const MeanSd p = mean_sd(pp), t = mean_sd(tg);
    r.prefill_tok_s = p.mean;
    r.prefill_tok_s_sd = p.sd;
    r.decode_tok_s = t.mean;
    r.decode_tok_s_sd = t.sd;
  }
  r.decode_roofline_tok_s = r.stream_read_gbps * 1e9 / r.decode_bytes_per_token;
  if (o.spread_tokens > 0 && c.num_experts > 0) {
    const RoutingSpread spread = measure_routing_spread(files, o.spread_tokens, o.threads, o.seed + 1, o.kernels);
    r.experts_hit_fraction = spread.mean_fraction();
    for (int64_t hit : spread.experts_hit)
      r.experts_hit_per_layer.push_back(static_cast<double>(hit) / static_cast<double>(spread.experts));
    r.experts_hit_uniform = RoutingSpread::uniform_fraction(o.spread_tokens, c.num_experts_per_tok, c.num_experts);
  }
  return r;
}

}  // namespace tandem
